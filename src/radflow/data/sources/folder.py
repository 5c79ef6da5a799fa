"""A folder of class sub-folders (``SRC/<class>/*.png|jpg|dcm``): a multi-class task.

Folder names are the classes (sorted); labels are stored one-hot. A folder carries no
patient identity, so each image counts as its own patient unless it is DICOM, whose
PatientID (hashed) is used instead; split warns about the risk in dataset.json.
"""

from __future__ import annotations

from pathlib import Path

from radflow.data.sources.base import IMAGE_SUFFIXES, SourceRecord, SourceTable
from radflow.errors import DataError, NotFoundError

__all__ = ["read_folder"]


def read_folder(src: Path) -> SourceTable:
    """One class per immediate sub-folder of ``src``; images found recursively inside each."""
    src = Path(src)
    if not src.is_dir():
        raise NotFoundError(f"folder source not found or not a directory: {src}")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"a folder source needs at least two class sub-folders (e.g. {src}/normal, {src}/abnormal); "
            f"found {classes or 'none'}",
            path=src,
        )
    records = []
    for name in classes:
        for path in sorted((src / name).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES and path.suffix:
                continue
            rel = str(path.relative_to(src))
            records.append(
                SourceRecord(
                    path=path,
                    rel_path=rel,
                    labels={c: float(c == name) for c in classes},
                    patient=None,
                    study=None,
                )
            )
    return SourceTable(
        records=records,
        labels=classes,
        task="multiclass",
        info={"format": "folder", "patient_identity": "DICOM PatientID, else one patient per image"},
    )
