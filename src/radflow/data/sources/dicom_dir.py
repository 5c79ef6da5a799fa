"""A directory of DICOM files (searched recursively), labels from an optional CSV.

The labels CSV (``SRC/labels.csv`` or ``--labels-csv``) is keyed by ``SOPInstanceUID`` or by
``path`` (relative to SRC); every other column is a label: 1 positive, 0 negative, -1
uncertain (under the uncertainty policy), blank unknown (ignored). Without a CSV the dataset
is unlabelled, fit for ``radflow score``. Patient and study come from the DICOM header and
are hashed at ingest like every other identifier. Only files inside SRC are read: a link
pointing out of it is skipped and listed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from radflow.data.labels import parse_label_list, parse_uncertainty
from radflow.data.sources.base import SourceRecord, SourceTable, read_csv, skip_entry
from radflow.data.sources.paths import SourceFolder
from radflow.errors import DataError, NotFoundError

__all__ = ["read_dicom_dir"]

KEYS = ("SOPInstanceUID", "path")


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _sop_uid(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (InvalidDicomError, OSError, ValueError):
        return None
    uid = ds.get("SOPInstanceUID")
    return None if uid is None else str(uid)


def read_dicom_dir(
    src: Path, labels_csv: Path | None = None, uncertain: str = "zeros", labels: str | list[str] | None = None
) -> SourceTable:
    src = Path(src)
    if not src.is_dir():
        raise NotFoundError(f"DICOM source not found or not a directory: {src}")
    if labels_csv is None and (src / "labels.csv").is_file():
        labels_csv = src / "labels.csv"
    folder = SourceFolder(src)
    walk = folder.walk()
    files = [p for p in walk.files if p.name != "DICOMDIR" and _is_dicom(p)]
    table: dict[str, dict[str, float]] = {}
    key = ""
    label_names: list[str] = []
    skipped = [skip_entry(folder.relative(p), "links outside the source folder; not read") for p in walk.outside]
    if labels_csv is not None:
        frame = read_csv(Path(labels_csv), "DICOM labels CSV")
        key = next((k for k in KEYS if k in frame.columns), "")
        if not key:
            raise DataError(
                "labels CSV needs a key column named SOPInstanceUID or path (relative to the DICOM folder); "
                f"found {', '.join(frame.columns)}",
                path=labels_csv,
            )
        label_names = [c for c in frame.columns if c not in KEYS]
        if not label_names:
            raise DataError("labels CSV has a key column but no label columns", path=labels_csv)
        policy = parse_uncertainty(uncertain, label_names)
        for i, row in enumerate(frame.to_dict("records")):
            values: dict[str, float] = {}
            try:
                for name in label_names:
                    cell = str(row[name]).strip()
                    values[name] = math.nan if cell == "" else policy.value(name, cell)
            except ValueError as exc:
                skipped.append(skip_entry(None, f"bad label value in column {name!r}: {exc}", i + 2, Path(labels_csv)))
                continue
            table[str(row[key]).strip()] = values
    selected = parse_label_list(labels, label_names) if label_names else None
    if selected:
        label_names = selected
    records = []
    for path in files:
        rel = folder.relative(path)
        values = {}
        if key:
            lookup = rel if key == "path" else _sop_uid(path)
            found = table.get(lookup or "")
            values = {n: (found[n] if found else math.nan) for n in label_names}
        records.append(SourceRecord(path=path, rel_path=rel, labels=values))
    if key:
        matched = sum(1 for r in records if any(not math.isnan(v) for v in r.labels.values()))
        if matched == 0 and records:
            raise DataError(
                f"no DICOM file matched a row of the labels CSV by {key}; check the key column's values",
                path=labels_csv,
            )
    return SourceTable(
        records=records,
        labels=label_names,
        task="multilabel",
        root=src,
        skipped=skipped,
        info={"format": "dicom", "labels_csv": str(labels_csv) if labels_csv else None, "key": key or None},
    )
