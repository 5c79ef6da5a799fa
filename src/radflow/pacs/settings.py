"""Where results go: the destination AE and/or STOW-RS URL, the UID root, the dead-letter folder.

One settings class for every door that delivers results (the gateway's direct path, the Kafka
worker): they differ in how they receive images, not in where the answers go.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ResultSettings", "check_ae_title"]

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.+")


def check_ae_title(value: str, what: str) -> str:
    """``value`` stripped, or ValueError saying what an AE title may hold."""
    title = value.strip()
    if not title or len(title) > 16 or any(c not in _AE_CHARS for c in title):
        raise ValueError(
            f"{what} {value!r} is not a DICOM AE title: 1-16 characters, letters, digits, space, _ - . + (e.g. RADFLOW)"
        )
    return title


class ResultSettings(BaseModel):
    """Destinations of DICOM results (SR, SEG): a C-STORE SCP, a STOW-RS service, or both."""

    model_config = ConfigDict(extra="forbid")

    calling_ae: str = "RADFLOW"
    """radflow's AE title when it associates with the destination (the PACS must know it)."""
    destination_ae: str | None = None
    """The destination's (called) AE title; with ``destination_host``/``destination_port`` results go by C-STORE."""
    destination_host: str = "127.0.0.1"
    """The destination's host name or address."""
    destination_port: int | None = Field(default=None, ge=1, le=65535)
    """The destination's DICOM port."""
    stow_url: str | None = None
    """A DICOMweb root (e.g. ``http://pacs:8042/dicom-web``); results go there by STOW-RS as well."""
    uid_root: str | None = None
    """The site's UID root for new Series/SOP Instance UIDs (dot-separated digits ending in ``.``); none: ``2.25.``."""
    dead_letter_dir: Path | None = None
    """Refused results are kept here (the DICOM file, a ``dead-letter.jsonl`` line with the reason); none: log only."""
    timeout_s: float = Field(default=30, gt=0)
    """Seconds to wait for the destination (association, C-STORE response, HTTP)."""
    heatmaps: bool = False
    """Also send each positive finding's heatmap (the model's CAM) as a Secondary Capture, not for diagnostic use."""

    @field_validator("calling_ae")
    @classmethod
    def _calling(cls, value: str) -> str:
        return check_ae_title(value, "calling AE title")

    @field_validator("destination_ae")
    @classmethod
    def _called(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value, "destination AE title")

    @field_validator("uid_root")
    @classmethod
    def _root(cls, value: str | None) -> str | None:
        from radflow.errors import DataError
        from radflow.runtime.dicom_sr import check_uid_root

        try:
            return None if value is None else check_uid_root(value)
        except DataError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _destination(self) -> ResultSettings:
        if (self.destination_ae is None) != (self.destination_port is None):
            raise ValueError("a C-STORE destination needs both its AE title and its port (--result-ae, --result-port)")
        if self.destination_ae is None and self.stow_url is None:
            raise ValueError("results need a destination: an AE title and port for C-STORE, or a STOW-RS URL")
        return self

    @property
    def destinations(self) -> list[str]:
        """The destinations by name, as metrics and dead-letter records call them."""
        out = []
        if self.destination_ae is not None:
            out.append(f"dicom:{self.destination_ae}@{self.destination_host}:{self.destination_port}")
        if self.stow_url is not None:
            out.append(f"stow:{self.stow_url}")
        return out
