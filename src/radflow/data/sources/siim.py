"""SIIM-ACR Pneumothorax Segmentation format: ``train-rle.csv`` (``ImageId, EncodedPixels``) and its images.

``EncodedPixels`` is the competition's run-length encoding (:func:`radflow.data.maskfiles.siim_decode`:
column-major, relative offsets, ``-1`` = no pneumothorax); several rows for one ImageId are one
mask, their union. The images are found below the CSV's folder by ImageId, whatever the tree: the
competition's ``dicom-images-train/<study>/<series>/<ImageId>.dcm`` or PNG/JPEG exports named
``<ImageId>.png``; an ImageId with slashes is a path below the folder, without its extension (how
radflow's phantoms and nested exports name images). The one structure is ``Pneumothorax``; an
optional ``Structure`` column (radflow's phantoms) names several, and an image without a row for a
structure leaves it not annotated. Patient identity comes from the DICOM header (PatientID), else
each image is its own patient.
"""

from __future__ import annotations

from pathlib import Path

from radflow.data.labels import parse_label_list
from radflow.data.maskfiles import SIIM_EMPTY, MaskSpec, siim_runs
from radflow.data.sources.base import SourceRecord, SourceTable, check_columns, read_csv, skip_entry
from radflow.data.sources.paths import Rule, SourceFolder, SourcePathError
from radflow.errors import DataError, NotFoundError

__all__ = ["SIIM_STRUCTURE", "read_siim"]

SIIM_STRUCTURE = "Pneumothorax"
REQUIRED = ("ImageId", "EncodedPixels")
EXTENSIONS = (".dcm", ".png", ".jpg", ".jpeg")


def _with_suffix(ext: str) -> Rule:
    return Rule(f"as written + {ext}, below the source folder", lambda parts: (*parts[:-1], parts[-1] + ext))


_PATH_RULES = tuple(_with_suffix(ext) for ext in EXTENSIONS)


def _csv(src: Path) -> Path:
    if src.is_file():
        return src
    preferred = src / "train-rle.csv"
    if preferred.is_file():
        return preferred
    found = sorted(src.glob("*rle*.csv"))
    if not found:
        raise NotFoundError(f"no SIIM-ACR mask CSV in {src}: expected train-rle.csv (ImageId, EncodedPixels)")
    return found[0]


def read_siim(src: Path, labels: str | list[str] | None = None) -> SourceTable:
    """Read a SIIM-ACR RLE CSV (a folder holding ``train-rle.csv``, or the CSV) and find its images."""
    src = Path(src)
    if not src.exists():
        raise NotFoundError(f"SIIM-ACR source not found: {src}")
    csv_path = _csv(src)
    frame = read_csv(csv_path, "SIIM-ACR RLE CSV")
    check_columns(frame, REQUIRED, csv_path, "SIIM-ACR RLE CSV")
    by_structure = "Structure" in frame.columns
    structures: list[str] = []
    rows: dict[str, list[tuple[int, str, str]]] = {}
    skipped = []
    for i, cells in enumerate(frame.to_dict("records")):
        line = i + 2
        image_id = str(cells["ImageId"]).strip()
        structure = str(cells["Structure"]).strip() if by_structure else SIIM_STRUCTURE
        encoded = str(cells["EncodedPixels"]).strip()
        if not image_id or not structure:
            skipped.append(skip_entry(None, f"blank {'ImageId' if not image_id else 'Structure'}", line, csv_path))
            continue
        if not encoded:
            message = "EncodedPixels is blank (an empty mask); write -1 for an image without the structure"
            skipped.append(skip_entry(image_id, message, line, csv_path))
            continue
        try:
            siim_runs(encoded)
        except DataError as exc:
            skipped.append(skip_entry(image_id, str(exc), line, csv_path))
            continue
        if structure not in structures:
            structures.append(structure)
        rows.setdefault(image_id, []).append((line, structure, encoded))
    if not structures:
        raise DataError("the SIIM-ACR CSV has no usable row", path=csv_path)
    selected = parse_label_list(labels, structures) or structures
    folder = SourceFolder(csv_path.parent)
    records: list[SourceRecord] = []
    for image_id, entries in rows.items():
        line = entries[0][0]
        try:
            if "/" in image_id:
                path = folder.resolve(image_id, _PATH_RULES, table=csv_path, row=line)
            else:
                path = folder.find([image_id + ext for ext in EXTENSIONS], written=image_id, table=csv_path, row=line)
        except SourcePathError as exc:
            skipped.append(skip_entry(image_id, exc.reason, line, csv_path))
            continue
        items = tuple((selected.index(s), encoded) for _, s, encoded in entries if s in selected)
        if not items:
            continue
        annotated = tuple(sorted({k for k, _ in items}))
        required = tuple(sorted({k for k, encoded in items if encoded != SIIM_EMPTY}))
        records.append(
            SourceRecord(
                path=path,
                rel_path=folder.relative(path),
                labels={},
                row=line,
                table=csv_path.name,
                mask=MaskSpec("siim", items, tuple(selected), annotated, required),
            )
        )
    return SourceTable(
        records=records,
        labels=selected,
        task="segmentation",
        root=folder.root,
        skipped=skipped,
        info={"format": "siim", "structures": selected, "patient_identity": "DICOM PatientID, else one per image"},
    )
