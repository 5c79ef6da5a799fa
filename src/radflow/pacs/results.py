"""Results back to the PACS: an answer as DICOM (SR, or SEG for masks) sent to every destination.

:meth:`ResultWriter.deliver` is the one delivery path: the gateway's direct path calls it after
scoring each image, the Kafka worker after each message. It builds the result from the source's
Part-10 bytes and the answer (:func:`radflow.runtime.dicom_sr.build_dicom_sr` for findings, values
and boxes; :func:`radflow.runtime.dicom_seg.build_dicom_seg` as well for a segmentation answer's
masks; with ``ResultSettings.heatmaps``, a Secondary Capture of each positive finding's heatmap,
:mod:`radflow.pacs.capture`), sends it to each destination (:mod:`radflow.pacs.send`) and records what
came back:

* ``radflow_pacs_results_total{kind, outcome}`` (kind SR/SEG/SC; outcome delivered, refused, unreachable);
* a refused or unreachable result is logged with the destination's status and reason and, with
  ``dead_letter_dir`` set, kept there as its DICOM file beside a ``dead-letter.jsonl`` line (time,
  kind, destination, status, reason, model, the file's name) so an operator can send it again.

The log and the dead-letter line name the study by the gateway's hash of its UID, never by a UID,
name or id; only the DICOM result itself (which must reference its source) holds those.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from pydicom.dataset import Dataset

from radflow.errors import DataError
from radflow.pacs.send import Delivery, send_cstore, send_stow
from radflow.pacs.settings import ResultSettings

if TYPE_CHECKING:
    from radflow.runtime import RadflowModel

__all__ = ["ResultWriter", "build_results", "build_seg", "result_kind"]

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

log = logging.getLogger(__name__)


def _study_name(dataset: Dataset) -> str:
    # the gateway's study hash (radflow.gateway.study_hash), first 12 characters as in its logs
    return hashlib.sha256(str(dataset.get("StudyInstanceUID", "")).encode()).hexdigest()[:12]


def build_results(
    source_bytes: bytes,
    answer: dict[str, Any],
    uid_root: str | None = None,
    heatmaps: Mapping[str, np.ndarray] | None = None,
) -> list[Dataset]:
    """The DICOM results of one answer on its source: an SR when it has findings, a value or boxes; a SEG for masks.

    And a Secondary Capture per ``heatmaps`` overlay (``{label: RGB uint8}``,
    :func:`radflow.pacs.capture.heatmap_overlays`), numbered in the given order.
    """
    from radflow.pacs.capture import build_heatmap_capture
    from radflow.runtime.dicom_sr import build_dicom_sr, new_uid, read_source

    source = read_source(source_bytes)
    model = answer.get("model") or {}
    name, version = str(model.get("name") or "radflow model"), str(model.get("version") or "")
    out: list[Dataset] = []
    if answer.get("findings") or answer.get("prediction") is not None or answer.get("boxes"):
        out.append(build_dicom_sr(source, answer, model_name=name, model_version=version, uid_root=uid_root))
    if answer.get("structures"):
        out.append(build_seg(source, answer, uid_root))
    if not out:
        raise DataError("the answer holds no findings, prediction, boxes or structures: no DICOM result to send.")
    series = new_uid(uid_root)
    for number, (label, overlay) in enumerate((heatmaps or {}).items(), start=1):
        capture = build_heatmap_capture(
            source,
            overlay,
            label,
            model_name=name,
            model_version=version,
            uid_root=uid_root,
            series_instance_uid=series,
            instance_number=number,
        )
        out.append(capture)
    return out


def result_kind(dataset: Dataset) -> str:
    """What a result is called in metrics and logs: ``SR``, ``SEG`` or ``SC`` (a heatmap's Secondary Capture)."""
    return "SC" if dataset.SOPClassUID == _SECONDARY_CAPTURE else str(dataset.Modality)


def build_seg(source: Dataset, answer: dict[str, Any], uid_root: str | None = None) -> Dataset:
    """The DICOM SEG of a segmentation ``answer`` on its parsed ``source``: one segment per structure's RLE mask.

    The one SEG builder of an answer: the results sent to PACS (:func:`build_results`) and
    ``/v1/predict?format=dicom-seg`` (:meth:`radflow.inference.InferenceService.dicom_seg`) both call
    it. New Series and SOP Instance UIDs are made under ``uid_root`` (``None``: ``2.25.``).
    """
    from radflow.runtime.dicom_seg import build_dicom_seg
    from radflow.runtime.dicom_sr import new_uid
    from radflow.runtime.masks import decode_rle
    from radflow.tasks.segmentation import LESION_STRUCTURES

    structures = answer.get("structures")
    model = answer.get("model") or {}
    name, version = str(model.get("name") or "radflow model"), str(model.get("version") or "")
    if not isinstance(structures, list) or not structures:
        raise DataError(f"model {name!r} answers no masks: a DICOM SEG is built from a segmentation answer.")
    masks = np.stack([decode_rle(s["rle"], f"structure {s['structure']}") for s in structures])
    seg = build_dicom_seg(
        source,
        masks,
        [str(s["structure"]) for s in structures],
        model_name=name,
        model_version=version,
        lesion_structures=LESION_STRUCTURES,
    )
    # the SEG builder draws its UIDs from pydicom's root; the site's root replaces them
    seg.SeriesInstanceUID = new_uid(uid_root)
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = new_uid(uid_root)
    return seg


class ResultWriter:
    """Builds and sends the results of answers; one per process, shared by its doors' tasks."""

    def __init__(self, settings: ResultSettings, registry: CollectorRegistry):
        self.settings = settings
        self.results = Counter(
            "radflow_pacs_results",
            "DICOM results sent to a destination, by kind (SR, SEG, SC) and outcome (delivered, refused, unreachable).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.build_failures = Counter(
            "radflow_pacs_build_failures", "Answers no DICOM result could be built for.", registry=registry
        )
        self._senders: list[Callable[[Dataset, ResultSettings], Delivery]] = []
        if settings.destination_ae is not None:
            self._senders.append(send_cstore)
        if settings.stow_url is not None:
            self._senders.append(send_stow)
        self._dead_letter_lock = threading.Lock()

    async def deliver(
        self, source_bytes: bytes, answer: dict[str, Any], model: RadflowModel | None = None
    ) -> list[Delivery]:
        """Build the answer's results and send each to every destination; what each destination answered.

        With ``settings.heatmaps`` and the ``model`` that answered, each positive finding's CAM goes as a
        Secondary Capture too (:mod:`radflow.pacs.capture`; a model without CAMs sends none).

        A refusal is counted, logged and dead-lettered here and returned, not raised: the image was
        scored and logged, only its way back failed. An answer or source no result can be built
        from raises :class:`radflow.errors.DataError` (counted in ``radflow_pacs_build_failures``).
        """
        loop = asyncio.get_running_loop()
        try:
            datasets = await loop.run_in_executor(None, self._build, source_bytes, answer, model)
        except DataError:
            self.build_failures.inc()
            raise
        deliveries: list[Delivery] = []
        for dataset in datasets:
            for send in self._senders:
                delivery = await loop.run_in_executor(None, send, dataset, self.settings)
                self._record(dataset, answer, delivery)
                deliveries.append(delivery)
        return deliveries

    def _build(self, source_bytes: bytes, answer: dict[str, Any], model: RadflowModel | None) -> list[Dataset]:
        from radflow.pacs.capture import heatmap_labels, heatmap_overlays

        heatmaps = None
        if self.settings.heatmaps and model is not None:
            heatmaps = heatmap_overlays(model, source_bytes, heatmap_labels(answer))
        return build_results(source_bytes, answer, self.settings.uid_root, heatmaps)

    def _record(self, dataset: Dataset, answer: dict[str, Any], delivery: Delivery) -> None:
        kind = result_kind(dataset)
        self.results.labels(kind, delivery.outcome).inc()
        study = _study_name(dataset)
        if delivery.ok:
            log.info("study %s: %s delivered to %s (%s)", study, kind, delivery.destination, delivery.status)
            return
        kept = self._dead_letter(dataset, answer, delivery, study)
        log.warning(
            "study %s: %s %s by %s: %s %s%s",
            study,
            kind,
            delivery.outcome,
            delivery.destination,
            delivery.status,
            delivery.reason,
            f" (kept as {kept})" if kept else " (not kept: no dead_letter_dir)",
        )

    def record_missing(self, study: str, message_id: str, outcome: str, reason: str) -> bool:
        """A ``dead-letter.jsonl`` line for a result that was never built (no answer came): False without the folder.

        ``study`` is the gateway's hash of the Study UID (first 12 characters kept); there is no file to
        send again, only the prediction's id to look up (``radflow predictions``, the store) and why.
        """
        folder = self.settings.dead_letter_dir
        if folder is None:
            return False
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "study": study[:12],
            "kind": None,
            "message_id": message_id,
            "outcome": outcome,
            "reason": reason,
            "file": None,
        }
        with self._dead_letter_lock, (folder / "dead-letter.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")
        return True

    def _dead_letter(self, dataset: Dataset, answer: dict[str, Any], delivery: Delivery, study: str) -> str | None:
        folder = self.settings.dead_letter_dir
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        # the file is named by a hash of the result's own new UID: no source identifier in a path
        name = hashlib.sha256(str(dataset.SOPInstanceUID).encode()).hexdigest()[:24] + ".dcm"
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        model = answer.get("model") or {}
        record = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "study": study,
            "kind": result_kind(dataset),
            "destination": delivery.destination,
            "outcome": delivery.outcome,
            "status": delivery.status,
            "reason": delivery.reason,
            "model": {"name": model.get("name"), "version": model.get("version")},
            "file": name,
        }
        with self._dead_letter_lock:
            (folder / name).write_bytes(buffer.getvalue())
            with (folder / "dead-letter.jsonl").open("a") as out:
                out.write(json.dumps(record) + "\n")
        return name
