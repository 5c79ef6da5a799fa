"""Pull studies from a PACS over DICOMweb: QIDO-RS to find them, WADO-RS to retrieve their instances.

Pull is push's other half: where a PACS cannot be set to forward studies to the gateway, the
gateway asks it. :class:`DicomWebSource` finds studies (by Study Instance UID, or those whose
Study Date/Time is at or after a point — polling asks for the day of the last poll and skips
the studies it has already taken) and retrieves each as Part-10 bytes per instance, which the
gateway scores as it scores the studies it receives (:meth:`radflow.gateway.Gateway.pull`).

Every call blocks (HTTP with ``requests``): the async caller runs them in an executor.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from radflow.errors import DataError, RadflowError

__all__ = ["DicomWebError", "DicomWebSource", "dicomweb_client", "to_part10"]

_STUDY_UID = "0020000D"
_STUDY_DATE = "00080020"
_STUDY_TIME = "00080030"


class DicomWebError(RadflowError):
    """The DICOMweb service did not answer as asked (unreachable, or an HTTP error)."""

    status_code = 502


def to_part10(dataset: Dataset) -> bytes:
    """The Part-10 file bytes of a retrieved instance (WADO-RS hands back parsed datasets)."""
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dicomweb_client(url: str, timeout_s: float) -> Any:
    """A ``DICOMwebClient`` on ``url`` that tries a request at most twice (0.5 s apart).

    dicomweb-client's default retries every failure, a refused connection too, five times with
    waits doubling from 1 s: half a minute of a blocked thread before a dead PACS is reported. One
    retry covers a busy answer (429, 503 ...); beyond it the caller's own loop (the next poll) or
    the dead-letter record takes over.
    """
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url, timeout=timeout_s)
    client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)
    return client


class DicomWebSource:
    """One DICOMweb root (e.g. ``http://pacs:8042/dicom-web``)."""

    def __init__(self, url: str, timeout_s: float = 30):
        self.url = url
        self._client = dicomweb_client(url, timeout_s)

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return call(*args, **kwargs)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise DicomWebError(f"{what} at {self.url} answered HTTP {code}.") from None
        except requests.RequestException as exc:
            raise DicomWebError(f"{what} at {self.url} failed: {type(exc).__name__}.") from None

    def studies_since(self, since: datetime | None = None) -> list[str]:
        """Study Instance UIDs of the studies whose Study Date/Time is at or after ``since`` (all when ``None``)."""
        filters = {} if since is None else {"StudyDate": f"{since:%Y%m%d}-"}
        found = self._call(
            "QIDO-RS",
            self._client.search_for_studies,
            search_filters=filters,
            fields=["StudyInstanceUID", "StudyDate", "StudyTime"],
            get_remaining=True,
        )
        out = []
        for item in found or []:
            uid = _value(item, _STUDY_UID)
            if not uid:
                continue
            when = _when(item)
            if since is not None and when is not None and when < since.replace(tzinfo=None):
                continue
            out.append(uid)
        return out

    def exists(self, study_uid: str) -> bool:
        """Whether QIDO-RS finds the study."""
        found = self._call("QIDO-RS", self._client.search_for_studies, search_filters={"StudyInstanceUID": study_uid})
        return bool(found)

    def series_of(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """QIDO-RS series of a study (DICOM JSON), optionally of one modality (``SR``, ``SEG``)."""
        filters = {"Modality": modality} if modality else {}
        found = self._call(
            "QIDO-RS", self._client.search_for_series, study_instance_uid=study_uid, search_filters=filters
        )
        return list(found or [])

    def retrieve(self, study_uid: str) -> list[bytes]:
        """Every instance of a study as Part-10 bytes (WADO-RS)."""
        datasets = self._call("WADO-RS", self._client.retrieve_study, study_uid)
        if not datasets:
            raise DataError(f"WADO-RS at {self.url} returned no instances for the study asked for.")
        return [to_part10(ds) for ds in datasets]


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _when(item: dict[str, Any]) -> datetime | None:
    date = _value(item, _STUDY_DATE)
    if not date:
        return None
    time = (_value(item, _STUDY_TIME) or "000000").split(".")[0].ljust(6, "0")[:6]
    try:
        return datetime.strptime(date + time, "%Y%m%d%H%M%S")
    except ValueError:
        return None
