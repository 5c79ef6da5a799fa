"""``radflow feedback export``: reader feedback and its stored pixels as extra training data.

Findings feedback exports in CheXpert's layout; corrected masks (a segmentation model's feedback,
``labels = {"masks": {structure: COCO RLE}}``) export as a ``--format masks`` source (see "Masks" below);
corrected boxes (a detection model's, ``labels = {"boxes": [{label, box}]}``) as a ``--format coco-boxes``
source (see "Boxes" below).

The serving store logs every prediction and keeps the input as an 8-bit PNG named by the sha256
of the upload; readers attach labels through ``POST /v1/feedback``. This module turns the
labelled predictions into a folder in CheXpert's layout (``train.csv`` with CheXpert's exact
columns, images at ``train/patientN/study1/view1_frontal.png``), which the existing CheXpert
reader ingests; a workspace lists the folder in ``data.extra`` and its images join the training
split only (see :mod:`radflow.data.split`).

Decisions, because the log holds no patient identity (and must not):

* Each image is its own pseudo-patient, numbered from its content hash; ingest prefixes extra
  sources' patients with the folder name, so they can never merge with a real patient.
* One image per content hash: the latest feedback on any prediction of that image wins, and
  shadow rows (the same request scored by the challenger) are never separate images.
* Held-out data never flows back into training. Every image is screened against the held-out
  (val and test) rows of the dataset given (:class:`HeldOutScreen`): it is refused when it was sent
  with a held-out patient's or study's id as routing key (the store keeps a hash of the key), when
  its preprocessed pixels are a held-out image's (an 8-bit re-encoding of a test film) or a perceptual
  near-duplicate of one (a re-exposed, noisy or blurred copy, :mod:`radflow.data.neardup`). Of a
  dataset not yet split, every main-source image counts as held out (any of them may land in test).
  Refusals are counted per reason in ``held_out``; the screen itself is described in ``screen``.
* Images the dataset already trains on (same bytes, or the same preprocessed pixels) are dropped
  as duplicates (``skipped.in_dataset``).
* Labels the reader gave are written as 1.0 / 0.0; ``correct: true`` without labels confirms the
  model's own calls; other findings stay blank (CheXpert's "not mentioned"). Feedback with
  neither, regression values (the RSNA layout needs the patient's sex, which is not logged) and
  predictions whose pixels are no longer stored are skipped and counted.
* The output depends only on the feedback, never on the time of export, so an unchanged log
  gives a byte-identical folder and DVC reruns nothing.

Masks: the folder :func:`radflow.data.sources.maskfolder.read_mask_folder` reads, ``structures.txt``
(the answers' structures, in the model's order), ``images/<name>.png`` (the stored input) and one
black/white PNG per corrected structure at the input's size, ``masks/images/<name>/<structure>.png``;
a structure the reader sent no mask for has no file (not annotated, so it trains nothing on that
image). ``patients.csv`` gives each image its own pseudo-patient. The same held-out screen applies.

Boxes: the COCO JSON :func:`radflow.data.sources.boxsources.read_coco_box_source` reads (``ingest --format
coco-boxes``): ``annotations.json`` with one image per stored input (``images/<name>.png``, its width and
height), one ``bbox`` ``[x, y, width, height]`` annotation per corrected box in the input's pixels, and the
box labels as categories (in the order the answers and corrections first name them). A correction with no
box ("no finding") is an image without annotations. Each PNG image is its own patient (the reader's rule
for a layout without patients). The same held-out screen applies.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from radflow.data.labels import CHEXPERT_LABELS
from radflow.data.neardup import DEFAULT_THRESHOLD
from radflow.data.sources.chexpert import META_COLUMNS
from radflow.errors import ConfigError, DataError, ImageDecodeError, NotFoundError
from radflow.store import LabelledPrediction, Store, input_path, labelled_predictions, materialize_crop, study_key

EXPORT_FORMATS = ("chexpert", "masks", "coco-boxes")
"""Layouts :func:`export_feedback` writes: findings as CheXpert, corrected masks as a mask folder, corrected
boxes as a COCO JSON."""

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_FORMATS",
    "FEEDBACK_DIR",
    "HELD_OUT_REASONS",
    "HeldOutScreen",
    "export_feedback",
    "held_out_summary",
    "parse_since",
    "screen_dataset",
    "store_location",
]

FEEDBACK_DIR = "data/feedback"
"""Where ``radflow loop`` exports a workspace's feedback (listed in ``data.extra``)."""
CSV_COLUMNS = (*META_COLUMNS, *CHEXPERT_LABELS)
SUMMARY_FILE = "export.json"
HELD_OUT_REASONS: dict[str, str] = {
    "held_out_study": "of a held-out patient or study",
    "pixel_identical": "pixel-identical to a held-out image",
    "near_duplicate": "perceptual near-duplicate of a held-out image",
}
"""Why an image is refused as held-out data (keys of the summary's ``held_out``), in words."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class HeldOutScreen:
    """What must never come back as training data: the held-out images of a dataset, and its training pixels.

    Reads the manifest's split and identity columns and the pixel shards, never source paths or
    file names (those may be pseudonymised or absent).
    """

    def __init__(self, dataset: Path, threshold: int = DEFAULT_THRESHOLD):
        import pandas as pd

        from radflow.data.dataset import Dataset
        from radflow.data.neardup import NearDuplicateIndex, pixel_digest
        from radflow.data.split import EXTRA_SPLIT

        ds = Dataset.open(dataset)
        manifest = ds.manifest
        main = (manifest["official_split"] != EXTRA_SPLIT).to_numpy()
        split = manifest["split"].to_numpy()
        self.split = bool((split != "").all())
        held = main & np.isin(split, ["val", "test"]) if self.split else main
        self.dataset = Path(dataset)
        self.size = ds.spec.size
        self.index = NearDuplicateIndex(ds.images(np.flatnonzero(held)), threshold)
        self.bytes_in_dataset = set(manifest.loc[main, "sha256"].astype(str))
        self.held_out_bytes = set(manifest.loc[held, "sha256"].astype(str))
        # Callers route by a hashed study id (the simulator sends the manifest's own); the store keeps its hash.
        held_ids = pd.concat([manifest.loc[held, "study_id"], manifest.loc[held, "patient_id"]]).astype(str)
        self.held_out_keys = {study_key(value) for value in held_ids}
        # main-source training rows only: extra rows are earlier feedback, which each export writes again
        self.training_pixels = {pixel_digest(ds.image(int(i))) for i in np.flatnonzero(main & ~held)}

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": str(self.dataset),
            "held_out_images": len(self.index),
            "held_out": "val and test" if self.split else "every main-source image (the dataset is not split)",
            "near_duplicate_threshold_bits": self.index.threshold,
        }

    def verdict(self, data: bytes, shas: tuple[str, ...], key: str | None = None) -> str | None:
        """Why an upload must not be exported, or None when it may.

        ``data``: the stored bytes; ``shas``: their sha256 and the upload's; ``key``: its study key.
        """
        if key is not None and key in self.held_out_keys:
            return "held_out_study"
        if self.held_out_bytes.intersection(shas):  # a held-out source file itself
            return "pixel_identical"
        from radflow.data.decode import decode_image
        from radflow.data.neardup import pixel_digest
        from radflow.data.preprocess import prepare_pixels

        pixels = prepare_pixels(decode_image(data, name=shas[0]).pixels, self.size)
        match = self.index.find(pixels)
        if match is not None:
            return "pixel_identical" if match.exact else "near_duplicate"
        if self.bytes_in_dataset.intersection(shas) or pixel_digest(pixels) in self.training_pixels:
            return "in_dataset"
        return None


@dataclass(frozen=True)
class _Item:
    feedback_id: int
    prediction_id: str
    input_sha256: str
    labels: dict[str, float]
    study_key: str | None
    masks: dict[str, Any] | None = None
    """Corrected masks by structure (COCO RLE), for the masks layout."""
    boxes: list[dict[str, Any]] | None = None
    """Corrected boxes ``[{label, box: [x0, y0, x1, y1]}]`` (an empty list: no finding), for the coco-boxes layout."""
    crop: dict[str, Any] | None = None
    """A workflow crop row's ``outputs.crop``: its pixels are cut from the stored image (``materialize_crop``)."""


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``--since``: an ISO date/time (UTC unless it says otherwise) or a duration back from now (``7d``, ``12h``)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: give an ISO date or time (2026-01-31, 2026-01-31T08:00) or a duration (12h, 7d)."
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def screen_dataset(workspace: Path) -> Path:
    """The dataset a workspace's feedback is screened against: the split one when built, else the ingested one."""
    from radflow.pipeline.dvc_yaml import DATASET, SPLIT_DATASET

    split = workspace / SPLIT_DATASET
    return split if (split / "manifest.parquet").is_file() else workspace / DATASET


def store_location(
    workspace: Path | None = None, store_url: str | None = None, inputs_dir: Path | None = None
) -> tuple[str, Path]:
    """(store URL, stored-inputs folder), resolved as the server resolves them (its settings and environment)."""
    from radflow.inference.settings import ServeSettings

    settings = ServeSettings(workspace=workspace, store_url=store_url, inputs_dir=inputs_dir)
    return settings.resolved_store_url(), settings.resolved_inputs_dir()


def _read_feedback(url: str, inputs_dir: Path, since: datetime | None) -> list[LabelledPrediction]:
    """Predictions with feedback (given since ``since``), each with its latest row; oldest feedback first."""
    with Store(url, inputs_dir, create=False) as store:
        rows = labelled_predictions(store, since=since, siblings=False)
    return sorted(rows, key=lambda r: r.feedback_id)


def _labels(row: LabelledPrediction, unknown: set[str]) -> dict[str, float] | None:
    """The CheXpert labels a feedback row states, or None when it states none usable."""
    if row.outputs.get("structures"):  # corrected masks: the masks layout's, not findings
        return None
    if isinstance(row.labels, dict) and "boxes" in row.labels:  # corrected boxes: the coco-boxes layout's
        return None
    if isinstance(row.labels, dict) and row.labels:
        labels = {str(k): float(v) for k, v in row.labels.items() if v is not None}
    elif row.correct is True and row.outputs.get("findings"):
        # The reader confirmed the model's calls: its positive/negative decisions are the labels.
        labels = {str(f["label"]): 1.0 if f.get("positive") else 0.0 for f in row.outputs["findings"]}
    else:
        return None
    unknown.update(k for k in labels if k not in CHEXPERT_LABELS)
    labels = {k: v for k, v in labels.items() if k in CHEXPERT_LABELS and v in (0.0, 1.0)}
    return labels or None


def _feedback_format(rows: list[LabelledPrediction]) -> str:
    """The layout the feedback asks for: ``masks`` when it corrects segmentation answers, ``coco-boxes`` when it
    corrects detection answers, else ``chexpert``."""
    boxes = sum(r.outputs.get("boxes") is not None for r in rows)
    if boxes:
        if boxes < len(rows):
            raise ConfigError(
                f"the store holds feedback on boxes ({boxes} predictions) and on other answers "
                f"({len(rows) - boxes}); export one kind at a time: pass format='coco-boxes' or another format."
            )
        return "coco-boxes"
    masks = sum(bool(r.outputs.get("structures")) for r in rows)
    if masks and masks < len(rows):
        raise ConfigError(
            f"the store holds feedback on masks ({masks} predictions) and on findings or values "
            f"({len(rows) - masks}); export one kind at a time: pass format='masks' or format='chexpert'."
        )
    return "masks" if masks else "chexpert"


def _masks(row: LabelledPrediction) -> dict[str, Any] | None:
    """The corrected masks of a feedback row on a segmentation answer, or None when it sent none."""
    if not row.outputs.get("structures") or not isinstance(row.labels, dict):
        return None
    masks = row.labels.get("masks")
    return dict(masks) if isinstance(masks, dict) and masks else None


def _boxes(row: LabelledPrediction) -> list[dict[str, Any]] | None:
    """The corrected boxes of a feedback row on a detection answer ([] says no finding), or None when it sent none."""
    if row.outputs.get("boxes") is None or not isinstance(row.labels, dict):
        return None
    boxes = row.labels.get("boxes")
    return list(boxes) if isinstance(boxes, list) else None


def _structure_file(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"structure {name!r} cannot name a mask file (no '/', '\\' or leading '.'); rename it")
    return f"{name}.png"


def held_out_summary(info: dict[str, Any]) -> str:
    """One line saying what an export refused as held-out data and why (for the CLI and the loop)."""
    screen = info.get("screen")
    if screen is None:
        return "held-out screen: none (no dataset given, nothing was checked against val/test)"
    refused = {k: v for k, v in info["held_out"].items() if v}
    what = ", ".join(f"{v} {HELD_OUT_REASONS[k]}" for k, v in refused.items()) or "none"
    return (
        f"held-out images excluded: {what} (screened against {screen['held_out_images']} {screen['held_out']} "
        f"images of {screen['dataset']}; near-duplicate = pHash within {screen['near_duplicate_threshold_bits']} bits)"
    )


def _csv_row(rel: str, labels: dict[str, float]) -> dict[str, str]:
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update({"Path": rel, "Frontal/Lateral": "Frontal"})
    row.update({k: f"{v:.1f}" for k, v in labels.items()})
    return row


def export_feedback(
    out: Path,
    store_url: str,
    inputs_dir: Path,
    *,
    since: datetime | None = None,
    dataset: Path | None = None,
    format: str | None = None,
) -> dict[str, Any]:
    """Write the feedback of the store at ``store_url`` to ``out``; returns what was written.

    ``format``: ``chexpert`` (findings) or ``masks`` (corrected masks, see the module docstring); None: the
    one the feedback is (a store with both kinds must say which).

    ``dataset``: the dataset whose held-out images are refused and whose training images are left out
    (a workspace's split dataset, ``data/split``); see :class:`HeldOutScreen`. Without it nothing is
    screened, and the summary says so. The folder is rebuilt from scratch beside ``out`` and swapped in,
    so a failed export leaves the old one.
    """
    out = Path(out).resolve()
    rows = _read_feedback(store_url, inputs_dir, since)
    if not rows:
        when = f" since {since.isoformat()}" if since else ""
        raise NotFoundError(
            f"no feedback{when} in {store_url} yet; readers give it in the web UI or with POST /v1/feedback."
        )
    if format is not None and format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown feedback export format {format!r}; radflow writes {', '.join(EXPORT_FORMATS)}.")
    fmt = format or _feedback_format(rows)
    unknown: set[str] = set()
    skipped = {"no_labels": 0, "regression": 0, "no_input": 0, "missing_pixels": 0, "unreadable": 0, "in_dataset": 0}
    structures: list[str] = []
    box_labels: list[str] = []
    held_out = dict.fromkeys(HELD_OUT_REASONS, 0)
    by_image: dict[str, _Item] = {}
    merged = 0
    for row in rows:  # oldest feedback first: later feedback on the same image replaces earlier
        masks = _masks(row) if fmt == "masks" else None
        boxes = _boxes(row) if fmt == "coco-boxes" else None
        corrected = masks is not None or boxes is not None
        labels = _labels(row, unknown) if fmt == "chexpert" else ({} if corrected else None)
        if labels is None:
            skipped["regression" if row.value is not None else "no_labels"] += 1
            continue
        if not row.input_sha256:
            skipped["no_input"] += 1
            continue
        merged += row.input_sha256 in by_image
        by_image[row.input_sha256] = _Item(
            row.feedback_id, row.id, row.input_sha256, labels, row.study_key, masks, boxes, row.outputs.get("crop")
        )
        structures += [s["structure"] for s in row.outputs.get("structures") or [] if s["structure"] not in structures]
        if fmt == "coco-boxes":  # every label the model answers for (an answer lists them), then any corrected
            named = [*(row.outputs.get("labels") or []), *(b["label"] for b in row.outputs.get("boxes") or [])]
            for label in [*named, *(b["label"] for b in boxes or [])]:
                if label not in box_labels:
                    box_labels.append(label)
    screen = HeldOutScreen(dataset) if dataset is not None else None
    staging = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "train" if fmt == "chexpert" else staging).mkdir(parents=True)
    written: dict[str, dict[str, str]] = {}
    coco_images: dict[str, dict[str, Any]] = {}
    annotated = dict.fromkeys(structures, 0)
    try:
        for item in sorted(by_image.values(), key=lambda i: i.feedback_id):
            source = input_path(inputs_dir, item.input_sha256)
            if not source.is_file() and item.crop:
                source = materialize_crop(inputs_dir, item.input_sha256, {"crop": item.crop}) or source
            if not source.is_file():
                skipped["missing_pixels"] += 1
                continue
            data = source.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if screen is not None:
                try:
                    reason = screen.verdict(data, (sha, item.input_sha256), item.study_key)
                except ImageDecodeError:
                    skipped["unreadable"] += 1
                    continue
                if reason in held_out:
                    held_out[reason] += 1
                    continue
                if reason == "in_dataset":
                    skipped["in_dataset"] += 1
                    continue
            # Two uploads (e.g. PNG and DICOM of one film) with the same stored pixels: the later feedback wins.
            merged += sha in written
            if item.masks is not None:
                written[sha] = _write_masks(staging, sha, data, item.masks)
                continue
            if item.boxes is not None:
                coco_images[sha] = _write_box_image(staging, sha, data, item.boxes)
                written[sha] = {"path": coco_images[sha]["file_name"]}
                continue
            # A pseudo-patient per image, numbered from its hash (CheXpert paths need patient<digits>).
            patient = f"patient{int(sha[:15], 16)}"
            rel = f"train/{patient}/study1/view1_frontal.png"
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written[sha] = _csv_row(f"{out.name}/{rel}", item.labels)
        boxes_per_label: dict[str, int] = {}
        if fmt == "coco-boxes":
            boxes_per_label = _write_coco(staging, box_labels, coco_images)
        elif fmt == "masks":
            _write_mask_tables(staging, structures, written)
            for entry in written.values():
                for name in entry["structures"].split("|") if entry["structures"] else []:
                    annotated[name] += 1
        else:
            with (staging / "train.csv").open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
                writer.writeheader()
                for sha in sorted(written):
                    writer.writerow(written[sha])
        summary = {
            "format": fmt,
            "images": len(written),
            "feedback_rows": sum(r.n_feedback for r in rows),
            "predictions_with_feedback": len(rows),
            "duplicates_merged": merged,
            "skipped": skipped,
            "held_out": held_out,
            "screen": screen.describe() if screen is not None else None,
            "unknown_labels": sorted(unknown),
            "since": since.isoformat() if since else None,
        }
        if fmt == "masks":
            summary.update(structures=structures, annotated=annotated)
        elif fmt == "coco-boxes":
            summary.update(labels=box_labels, boxes=boxes_per_label)
        else:
            summary["positives"] = {
                label: sum(1 for r in written.values() if r[label] == "1.0")
                for label in CHEXPERT_LABELS
                if any(r[label] for r in written.values())
            }
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            if not (out / SUMMARY_FILE).is_file() and any(out.iterdir()):
                raise DataError(
                    f"exists and is not a feedback export (no {SUMMARY_FILE}); choose an empty or new --out folder", out
                )
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out": str(out), "store": store_url, "inputs_dir": str(inputs_dir), **summary}


def _write_masks(staging: Path, sha: str, data: bytes, masks: dict[str, Any]) -> dict[str, str]:
    """One image and its corrected masks in the mask-folder layout; its patients.csv row (with its structures)."""
    from radflow.runtime.masks import decode_rle, encode_mask_png

    name = f"feedback-{sha[:16]}"
    rel = f"images/{name}.png"
    (staging / "images").mkdir(exist_ok=True)
    (staging / rel).write_bytes(data)
    folder = staging / "masks" / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    for structure, rle in sorted(masks.items()):
        mask = decode_rle(rle, f"feedback mask {structure!r} of image {name}")
        (folder / _structure_file(structure)).write_bytes(encode_mask_png(mask))
    return {"path": rel, "patient_id": name, "structures": "|".join(sorted(masks))}


def _write_mask_tables(staging: Path, structures: list[str], written: dict[str, dict[str, str]]) -> None:
    """structures.txt (the model's structures, in order) and patients.csv (one pseudo-patient per image)."""
    (staging / "structures.txt").write_text("".join(f"{s}\n" for s in structures))
    with (staging / "patients.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "patient_id"], lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for sha in sorted(written):
            writer.writerow(written[sha])


def _write_box_image(staging: Path, sha: str, data: bytes, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    """One stored input in the coco-boxes layout; its COCO image entry (without id) with its corrected boxes."""
    import io

    from PIL import Image

    name = f"feedback-{sha[:16]}"
    rel = f"images/{name}.png"
    (staging / "images").mkdir(exist_ok=True)
    (staging / rel).write_bytes(data)
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return {"file_name": rel, "width": width, "height": height, "boxes": boxes}


def _write_coco(staging: Path, labels: list[str], images: dict[str, dict[str, Any]]) -> dict[str, int]:
    """annotations.json: the images in hash order, a ``bbox`` per corrected box, the labels as categories;
    returns the boxes written per label."""
    category = {label: k + 1 for k, label in enumerate(labels)}
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": k, "name": label} for label, k in category.items()]
    counts = dict.fromkeys(labels, 0)
    for image_id, sha in enumerate(sorted(images), start=1):
        entry = images[sha]
        coco["images"].append(
            {"id": image_id, "file_name": entry["file_name"], "width": entry["width"], "height": entry["height"]}
        )
        for box in entry["boxes"]:
            x0, y0, x1, y1 = (float(v) for v in box["box"])
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category[box["label"]],
                    "bbox": [x0, y0, round(x1 - x0, 6), round(y1 - y0, 6)],
                    "area": round((x1 - x0) * (y1 - y0), 6),
                    "iscrowd": 0,
                }
            )
            counts[box["label"]] += 1
    (staging / "annotations.json").write_text(json.dumps(coco, indent=1) + "\n")
    return counts
