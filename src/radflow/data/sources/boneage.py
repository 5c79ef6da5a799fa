"""RSNA Pediatric Bone Age format: ``boneage-training-dataset.csv`` (id, boneage, male).

Images are ``<id>.png`` in a folder beside the CSV (``boneage-training-dataset/``). The
target is bone age in months; sex is kept as a model input. Each image is one child. Images are
found by name (``<id>.png``, ``.jpg`` or ``.dcm``) anywhere below the CSV's folder and nowhere
else; an id two files answer to is an error.
"""

from __future__ import annotations

from pathlib import Path

from radflow.data.sources.base import SourceRecord, SourceTable, check_columns, read_csv, skip_entry
from radflow.data.sources.paths import SourceFolder, SourcePathError
from radflow.errors import NotFoundError

__all__ = ["read_boneage"]

REQUIRED = ("id", "boneage", "male")
TARGET = "boneage"
EXTENSIONS = (".png", ".jpg", ".dcm")


def _csv(src: Path) -> Path:
    if src.is_file():
        return src
    preferred = src / "boneage-training-dataset.csv"
    if preferred.is_file():
        return preferred
    found = sorted(p for p in src.glob("*.csv") if "test" not in p.name.lower())
    if not found:
        raise NotFoundError(f"no RSNA bone-age CSV in {src}: expected boneage-training-dataset.csv (id, boneage, male)")
    return found[0]


def read_boneage(src: Path) -> SourceTable:
    """Read an RSNA bone-age CSV and locate its images."""
    src = Path(src)
    if not src.exists():
        raise NotFoundError(f"bone-age source not found: {src}")
    csv_path = _csv(src)
    frame = read_csv(csv_path, "RSNA bone-age CSV")
    check_columns(frame, REQUIRED, csv_path, "RSNA bone-age CSV")
    folder = SourceFolder(csv_path.parent)
    records: list[SourceRecord] = []
    skipped = []
    for i, (image_id, boneage, male) in enumerate(frame[list(REQUIRED)].itertuples(index=False)):
        line = i + 2
        image_id = str(image_id).strip()
        try:
            path = folder.find([image_id + ext for ext in EXTENSIONS], written=image_id, table=csv_path, row=line)
        except SourcePathError as exc:
            skipped.append(skip_entry(f"{image_id}.png", exc.reason, line, csv_path))
            continue
        rel = folder.relative(path)
        try:
            months = float(boneage)
        except ValueError:
            skipped.append(skip_entry(rel, f"boneage must be a number of months, got {boneage!r}", line, csv_path))
            continue
        if not 0 <= months <= 300:
            skipped.append(skip_entry(rel, f"boneage {months} months is outside 0-300", line, csv_path))
            continue
        flag = str(male).strip().lower()
        if flag not in ("true", "false", "1", "0"):
            skipped.append(skip_entry(rel, f"male must be True or False, got {male!r}", line, csv_path))
            continue
        records.append(
            SourceRecord(
                path=path,
                rel_path=rel,
                labels={TARGET: months},
                patient=image_id,
                study=image_id,
                view="hand",
                sex="M" if flag in ("true", "1") else "F",
                row=line,
                table=csv_path.name,
            )
        )
    return SourceTable(
        records=records,
        labels=[TARGET],
        task="regression",
        root=folder.root,
        skipped=skipped,
        info={"format": "boneage", "unit": "months"},
    )
