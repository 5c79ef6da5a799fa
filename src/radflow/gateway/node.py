"""The DICOM transport: a pynetdicom Application Entity answering C-ECHO and C-STORE.

Associations are accepted only when addressed to this node's AE title and, when a list is set,
from an allowed calling AE title (others are rejected by pynetdicom with reason 3, "calling AE
title not recognised", or 7, "called AE title not recognised"). Every storage SOP class is
negotiated, so a sender learns *why* an instance is refused from its C-STORE status instead of a
bare context rejection:

========  ===============================================================  ==============
status    instance                                                         outcome label
========  ===============================================================  ==============
0x0000    an image (any "... Image Storage" SOP class) radflow can decode  stored
0x0122    not an image SOP class (SR, PDF, SEG, raw data ...)              non_image
0xA700    ``max_pending_mb`` of unscored images held already, or stopping  out_of_resources
0xA900    no Pixel Data, or SOP class/UIDs not those of the context        no_pixel_data, mismatch
0xC000    the data set cannot be parsed (truncated, corrupt)               undecodable
0xC001    the pixels cannot be decoded (truncated, unsupported codec ...)  undecodable
========  ===============================================================  ==============

Failures carry an Error Comment with the reason (structural only, never an attribute's value) and
are counted in ``radflow_gateway_instances``; nothing of a refused instance is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from radflow.data.dicom import decode_dicom
from radflow.errors import ImageDecodeError
from radflow.gateway.metrics import GatewayMetrics
from radflow.gateway.routing import SeriesInfo
from radflow.gateway.settings import GatewaySettings

__all__ = [
    "STATUS_CANNOT_DECODE",
    "STATUS_CANNOT_PARSE",
    "STATUS_MISMATCH",
    "STATUS_NOT_SUPPORTED",
    "STATUS_OUT_OF_RESOURCES",
    "DicomNode",
    "ReceivedInstance",
    "is_image_storage",
]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_NOT_SUPPORTED = 0x0122
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900
STATUS_CANNOT_PARSE = 0xC000
STATUS_CANNOT_DECODE = 0xC001
_COMMENT_LIMIT = 64  # Error Comment is LO: at most 64 characters


def is_image_storage(sop_class_uid: str) -> bool:
    """Whether a SOP class stores an image radflow can score (CR, DX, CT, MR, Secondary Capture ...)."""
    return "Image Storage" in UID(sop_class_uid).name


class ReceivedInstance:
    """One accepted instance: its grouping UIDs (kept in memory only), routing attributes and Part-10 bytes."""

    __slots__ = ("data", "info", "series_uid", "sop_uid", "study_uid")

    def __init__(self, study_uid: str, series_uid: str, sop_uid: str, info: SeriesInfo, data: bytes):
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.sop_uid = sop_uid
        self.info = info
        self.data = data


class _Refused(Exception):
    def __init__(self, status: int, outcome: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.outcome = outcome


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


class DicomNode:
    """The AE and its handlers; ``on_instance`` takes each valid instance (in association threads), False when full."""

    def __init__(
        self, settings: GatewaySettings, metrics: GatewayMetrics, on_instance: Callable[[ReceivedInstance], bool]
    ):
        self.settings = settings
        self.metrics = metrics
        self.on_instance = on_instance
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.require_called_aet = True
        if settings.allowed_aes:
            self.ae.require_calling_aet = list(settings.allowed_aes)
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when settings.port is 0)."""
        if self._server is None:
            raise RuntimeError("the DICOM node is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen (in pynetdicom's server threads) until :meth:`stop`."""
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._echo),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_REJECTED, self._rejected),
        ]
        self._server = self.ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )

    def stop(self) -> None:
        """Stop listening and end the open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _echo(self, _event: Event) -> int:
        return STATUS_SUCCESS

    def _accepted(self, _event: Event) -> None:
        self.metrics.associations.labels("accepted").inc()

    def _rejected(self, event: Event) -> None:
        self.metrics.associations.labels("rejected").inc()
        # AE titles name devices, not patients: safe to log, and what an operator needs to fix the list.
        log.warning("association from calling AE %r refused", event.assoc.requestor.ae_title)

    def _store(self, event: Event) -> int | Dataset:
        try:
            received = self._check(event)
            if not self.on_instance(received):
                raise _Refused(
                    STATUS_OUT_OF_RESOURCES,
                    "out_of_resources",
                    "cannot hold it now (full or stopping); send it again later",
                )
        except _Refused as refused:
            self.metrics.instances.labels(refused.outcome).inc()
            log.warning("C-STORE refused (%s, 0x%04X): %s", refused.outcome, refused.status, refused)
            status = Dataset()
            status.Status = refused.status
            status.ErrorComment = str(refused)[:_COMMENT_LIMIT]
            return status
        self.metrics.instances.labels("stored").inc()
        return STATUS_SUCCESS

    def _check(self, event: Event) -> ReceivedInstance:
        """The instance, or _Refused with the status that says why it cannot be kept."""
        context_class = str(event.context.abstract_syntax)
        if not is_image_storage(context_class):
            name = UID(context_class).name
            raise _Refused(STATUS_NOT_SUPPORTED, "non_image", f"not an image SOP class: {name}")
        try:
            ds = event.dataset
            for _element in ds.iterall():  # pydicom parses lazily: convert every element (sequences too) now
                pass
            uids = {
                kw: _text(ds, kw) for kw in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            }
        except Exception as exc:  # pydicom raises many types on a corrupt data set; all mean the same here
            raise _Refused(
                STATUS_CANNOT_PARSE, "undecodable", f"data set cannot be parsed ({type(exc).__name__})"
            ) from None
        missing = [kw for kw, value in uids.items() if not value]
        if missing:
            raise _Refused(STATUS_MISMATCH, "mismatch", f"missing {', '.join(missing)}")
        if uids["SOPClassUID"] != context_class:
            raise _Refused(STATUS_MISMATCH, "mismatch", "SOP Class UID differs from the negotiated one")
        if "PixelData" not in ds:
            raise _Refused(STATUS_MISMATCH, "no_pixel_data", "image SOP class without Pixel Data")
        data = event.encoded_dataset(include_meta=True)
        try:
            decode_dicom(data, name="instance")
        except ImageDecodeError as exc:
            raise _Refused(STATUS_CANNOT_DECODE, "undecodable", str(exc).removeprefix("instance: ")) from None
        info = SeriesInfo(
            modality=_text(ds, "Modality"),
            body_part=_text(ds, "BodyPartExamined"),
            series_description=_text(ds, "SeriesDescription"),
            sop_class_uid=context_class,
        )
        return ReceivedInstance(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"], info, data)
