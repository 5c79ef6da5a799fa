"""Send a DICOM result to a PACS: C-STORE to a destination AE (pynetdicom) or STOW-RS (dicomweb-client).

Each send ends in a :class:`Delivery` that says what the destination answered, in its own terms
(a DICOM status with its Error Comment, an HTTP status with the STOW-RS Failure Reason), so a
refusal is never silent: the caller counts it, logs it and keeps the result
(:class:`radflow.pacs.results.ResultWriter`). Outcomes:

===========  =============================================================================
delivered    status 0x0000, or a warning (0xB000, 0xB006, 0xB007): the PACS kept the instance
refused      the association was rejected, or a failure status / HTTP 4xx-5xx / FailedSOPSequence
unreachable  no connection (refused, timed out, aborted): the PACS said nothing
===========  =============================================================================

Both calls block (a network round trip): the async caller runs them in an executor.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from radflow.pacs.settings import ResultSettings

__all__ = ["Delivery", "send_cstore", "send_stow"]

_WARNINGS = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Delivery:
    """What one destination answered for one result."""

    destination: str
    """``dicom:AE@host:port`` or ``stow:URL`` (:attr:`ResultSettings.destinations`)."""
    outcome: str
    """``delivered``, ``refused`` or ``unreachable``."""
    status: str
    """The answer as the destination gave it: ``0xA700``, ``HTTP 409``, ``association rejected``."""
    reason: str = ""
    """The destination's own words (Error Comment, Failure Reason, HTTP body), or why nothing came back."""

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


def send_cstore(dataset: Dataset, settings: ResultSettings) -> Delivery:
    """C-STORE ``dataset`` to the settings' destination AE over one association."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    assert settings.destination_ae is not None and settings.destination_port is not None
    name = settings.destinations[0]
    ae = AE(ae_title=settings.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout_s
    ae.connection_timeout = settings.timeout_s
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    syntaxes = list(dict.fromkeys([s for s in (syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian) if s]))
    ae.add_requested_context(dataset.SOPClassUID, syntaxes)
    assoc = ae.associate(settings.destination_host, settings.destination_port, ae_title=settings.destination_ae)
    if not assoc.is_established:
        if assoc.is_rejected:
            return Delivery(name, "refused", "association rejected", "check the calling and called AE titles")
        return Delivery(name, "unreachable", "no association", "connection refused, timed out or aborted")
    try:
        if not assoc.accepted_contexts:
            return Delivery(name, "refused", "context rejected", f"{dataset.SOPClassUID.name} is not accepted")
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    if "Status" not in status:
        return Delivery(name, "unreachable", "no response", "the association ended before the C-STORE response")
    code = int(status.Status)
    comment = str(status.get("ErrorComment", "") or "")
    if code == 0 or code in _WARNINGS:
        return Delivery(name, "delivered", f"0x{code:04X}", comment)
    return Delivery(name, "refused", f"0x{code:04X}", comment or _status_name(code))


def _status_name(code: int) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    described = STORAGE_SERVICE_CLASS_STATUS.get(code)
    return f"{described[0]}: {described[1]}" if described else "failure"


def send_stow(dataset: Dataset, settings: ResultSettings) -> Delivery:
    """STOW-RS ``dataset`` to the settings' DICOMweb root."""
    import requests

    from radflow.pacs.dicomweb import dicomweb_client

    assert settings.stow_url is not None
    name = f"stow:{settings.stow_url}"
    client = dicomweb_client(settings.stow_url, settings.timeout_s)
    try:
        answer = client.store_instances([dataset])
    except requests.HTTPError as exc:
        response = exc.response
        body = response.text[:300] if response is not None else ""
        code = response.status_code if response is not None else 0
        return Delivery(name, "refused", f"HTTP {code}", body or str(exc))
    except requests.RequestException as exc:
        return Delivery(name, "unreachable", "no response", type(exc).__name__)
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        reason = failed[0].get("FailureReason")
        return Delivery(name, "refused", "FailedSOPSequence", f"failure reason {reason}" if reason else "failed")
    return Delivery(name, "delivered", "HTTP 200")
