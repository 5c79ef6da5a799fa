"""``radflow feedback export``: reader feedback and its stored pixels as extra training data.

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
* Images the main dataset already holds (same bytes) are dropped: an uploaded test image must
  not come back as training data.
* Labels the reader gave are written as 1.0 / 0.0; ``correct: true`` without labels confirms the
  model's own calls; other findings stay blank (CheXpert's "not mentioned"). Feedback with
  neither, regression values (the RSNA layout needs the patient's sex, which is not logged) and
  predictions whose pixels are no longer stored are skipped and counted.
* The output depends only on the feedback, never on the time of export, so an unchanged log
  gives a byte-identical folder and DVC reruns nothing.
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

from radflow.data.labels import CHEXPERT_LABELS
from radflow.data.sources.chexpert import META_COLUMNS
from radflow.errors import ConfigError, DataError, NotFoundError
from radflow.store import LabelledPrediction, Store, input_path, labelled_predictions

__all__ = ["CSV_COLUMNS", "FEEDBACK_DIR", "export_feedback", "parse_since", "store_location"]

FEEDBACK_DIR = "data/feedback"
"""Where ``radflow loop`` exports a workspace's feedback (listed in ``data.extra``)."""
CSV_COLUMNS = (*META_COLUMNS, *CHEXPERT_LABELS)
SUMMARY_FILE = "export.json"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class _Item:
    feedback_id: int
    prediction_id: str
    input_sha256: str
    labels: dict[str, float]


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


def _dataset_hashes(dataset: Path | None) -> set[str]:
    """Content hashes of the main source's images in ``dataset`` (extra rows, e.g. earlier feedback, excluded)."""
    if dataset is None:
        return set()
    import pandas as pd

    from radflow.data.split import EXTRA_SPLIT

    manifest = Path(dataset) / "manifest.parquet"
    if not manifest.is_file():
        return set()
    frame = pd.read_parquet(manifest, columns=["sha256", "official_split"])
    return set(frame.loc[frame["official_split"] != EXTRA_SPLIT, "sha256"].astype(str))


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
) -> dict[str, Any]:
    """Write the feedback of the store at ``store_url`` to ``out`` in CheXpert layout; returns what was written.

    ``dataset``: a dataset folder whose main-source images are left out (the workspace's ``data/dataset``).
    The folder is rebuilt from scratch beside ``out`` and swapped in, so a failed export leaves the old one.
    """
    out = Path(out).resolve()
    rows = _read_feedback(store_url, inputs_dir, since)
    if not rows:
        when = f" since {since.isoformat()}" if since else ""
        raise NotFoundError(
            f"no feedback{when} in {store_url} yet; readers give it in the web UI or with POST /v1/feedback."
        )
    unknown: set[str] = set()
    skipped = {"no_labels": 0, "regression": 0, "no_input": 0, "missing_pixels": 0, "in_dataset": 0}
    by_image: dict[str, _Item] = {}
    merged = 0
    for row in rows:  # oldest feedback first: later feedback on the same image replaces earlier
        labels = _labels(row, unknown)
        if labels is None:
            skipped["regression" if row.value is not None else "no_labels"] += 1
            continue
        if not row.input_sha256:
            skipped["no_input"] += 1
            continue
        merged += row.input_sha256 in by_image
        by_image[row.input_sha256] = _Item(row.feedback_id, row.id, row.input_sha256, labels)
    known = _dataset_hashes(dataset)
    staging = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "train").mkdir(parents=True)
    written: dict[str, dict[str, str]] = {}
    try:
        for item in sorted(by_image.values(), key=lambda i: i.feedback_id):
            source = input_path(inputs_dir, item.input_sha256)
            if not source.is_file():
                skipped["missing_pixels"] += 1
                continue
            data = source.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if item.input_sha256 in known or sha in known:
                skipped["in_dataset"] += 1
                continue
            # Two uploads (e.g. PNG and DICOM of one film) with the same stored pixels: the later feedback wins.
            merged += sha in written
            # A pseudo-patient per image, numbered from its hash (CheXpert paths need patient<digits>).
            patient = f"patient{int(sha[:15], 16)}"
            rel = f"train/{patient}/study1/view1_frontal.png"
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written[sha] = _csv_row(f"{out.name}/{rel}", item.labels)
        with (staging / "train.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for sha in sorted(written):
                writer.writerow(written[sha])
        summary = {
            "format": "chexpert",
            "images": len(written),
            "feedback_rows": sum(r.n_feedback for r in rows),
            "predictions_with_feedback": len(rows),
            "duplicates_merged": merged,
            "skipped": skipped,
            "unknown_labels": sorted(unknown),
            "since": since.isoformat() if since else None,
            "positives": {
                label: sum(1 for r in written.values() if r[label] == "1.0")
                for label in CHEXPERT_LABELS
                if any(r[label] for r in written.values())
            },
        }
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            if not (out / "train.csv").is_file() and any(out.iterdir()):
                raise DataError(
                    "exists and is not a feedback export (no train.csv); choose an empty or new --out folder", out
                )
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out": str(out), "store": store_url, "inputs_dir": str(inputs_dir), **summary}
