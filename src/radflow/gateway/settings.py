"""How one ``radflow gateway`` node runs: its DICOM identity, who may send, when a study is complete, and the rules.

The model, store and every other serving setting come from :class:`radflow.inference.ServeSettings`
(the one source of serving configuration); these fields are the DICOM node's own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from radflow.gateway.routing import Rule

__all__ = ["GatewaySettings"]

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.+")


def _check_ae_title(value: str, what: str) -> str:
    title = value.strip()
    if not title or len(title) > 16 or any(c not in _AE_CHARS for c in title):
        raise ValueError(
            f"{what} {value!r} is not a DICOM AE title: 1-16 characters, letters, digits, space, _ - . + (e.g. RADFLOW)"
        )
    return title


class GatewaySettings(BaseModel):
    """The DICOM node's settings (``radflow gateway`` flags)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = "RADFLOW"
    """This node's AE title; calling SCUs must address it (the called AE title) or are refused."""
    host: str = "127.0.0.1"
    """Interface to listen on (``0.0.0.0`` to accept modalities from the network)."""
    port: int = Field(default=11112, ge=0, le=65535)
    """TCP port (11112 is DICOM's registered port; 0 picks a free one, as the tests do)."""
    allowed_aes: list[str] = []
    """Calling AE titles allowed to associate; empty allows any (say so in a log line at start)."""
    stable_after_s: float = Field(default=5.0, gt=0)
    """A study is complete (and scored) after this long without a new instance, as Orthanc's StableAge."""
    rules: list[Rule] = []
    """Routing rules, first match wins; none: every image series goes to the served model."""
    max_study_s: float = Field(default=3600, gt=0)
    """A study still receiving instances this long after its first is scored anyway, so it is never held forever."""
    max_pending_mb: float = Field(default=2048, gt=0)
    """Received, not yet scored instances held in memory (MiB); beyond it C-STORE answers 0xA700, the sender retries."""
    max_concurrent: int = Field(default=8, ge=1)
    """Images of stable studies scored at once (the service batches them; more waits, none is refused)."""

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value, "ae_title")

    @field_validator("allowed_aes")
    @classmethod
    def _allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v, "allowed calling AE title") for v in values]
