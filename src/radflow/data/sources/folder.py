"""A folder of class sub-folders (``SRC/<class>/*.png|jpg|dcm``): a multi-class task.

Folder names are the classes (sorted); labels are stored one-hot. A folder carries no
patient identity, so each image counts as its own patient unless it is DICOM, whose
PatientID (hashed) is used instead; split warns about the risk in dataset.json. Only files
inside SRC are read: a link pointing out of it is skipped and listed.
"""

from __future__ import annotations

from pathlib import Path

from radflow.data.sources.base import IMAGE_SUFFIXES, SourceRecord, SourceTable, skip_entry
from radflow.data.sources.paths import SourceFolder
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
    folder = SourceFolder(src)
    records = []
    skipped = []
    for name in classes:
        walk = folder.walk(src / name)
        skipped += [
            skip_entry(folder.relative(link), "links outside the source folder; not read") for link in walk.outside
        ]
        for path in walk.files:
            if path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES and path.suffix:
                continue
            rel = folder.relative(path)
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
        root=src,
        skipped=skipped,
        info={"format": "folder", "patient_identity": "DICOM PatientID, else one patient per image"},
    )
