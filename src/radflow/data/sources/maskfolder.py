"""A folder of images with their masks (``--format masks``): PNG/TIFF mask files, DICOM SEG, or a COCO JSON.

Layout (every path below SRC)::

    structures.txt        optional: structure names, one a line; line k is label index k (0 = background)
    <any>/<name>.png|jpg|dcm          the images: every image file outside masks/
    masks/<any>/<name>.png|tif        one mask per image, same path without the image's extension:
                                      binary (one structure) or label indices (several)
    masks/<any>/<name>/<Structure>.png  or one binary file per structure (a missing file: not annotated)
    masks/**/*.dcm                    or DICOM SEG files, matched to DICOM images by the source
                                      SOPInstanceUID they reference; segments are structures by label
    annotations.json                  or a COCO JSON instead of masks/ (its images' file_name below SRC
                                      or SRC/images/; categories are the structures, in id order)
    patients.csv                      optional: path (image, relative to SRC), patient_id[, study_id]

Without structures.txt the structures are the per-structure file names or SEG segment labels
(sorted), or one ``Foreground`` for single binary masks. An image without a mask, a mask without an
image, and a SEG whose source image is not in the folder are skipped and listed. Patient identity:
patients.csv, else the DICOM header's PatientID, else each image is its own patient.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from radflow.data.labels import parse_label_list
from radflow.data.maskfiles import MASK_SUFFIXES, MaskSpec
from radflow.data.sources.base import IMAGE_SUFFIXES, SourceRecord, SourceTable, check_columns, read_csv, skip_entry
from radflow.data.sources.paths import AS_WRITTEN, Rule, SourceFolder, SourcePathError
from radflow.errors import DataError, NotFoundError, did_you_mean

__all__ = ["COCO_FILE", "DEFAULT_STRUCTURE", "MASKS_FOLDER", "read_mask_folder"]

MASKS_FOLDER = "masks"
COCO_FILE = "annotations.json"
STRUCTURES_FILE = "structures.txt"
PATIENTS_FILE = "patients.csv"
DEFAULT_STRUCTURE = "Foreground"
IN_IMAGES = Rule("below the images/ folder of the source", lambda parts: ("images", *parts))


def _stem(rel: str) -> str:
    """A path relative to its folder without its last suffix (``a/b/img.png`` -> ``a/b/img``)."""
    head, _, name = rel.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{base}" if head else base


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError):
        return None


def _seg_reference(ds: pydicom.Dataset) -> str | None:
    for series in ds.get("ReferencedSeriesSequence", []):
        for instance in series.get("ReferencedInstanceSequence", []):
            return str(instance.ReferencedSOPInstanceUID)
    return None


def _read_structures(src: Path) -> list[str] | None:
    path = src / STRUCTURES_FILE
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError("structures.txt lists no structure (one name a line)", path=path)
    if len(set(names)) != len(names):
        raise DataError("structures.txt names a structure twice", path=path)
    return names


def _read_patients(src: Path, folder: SourceFolder, skipped: list[dict[str, Any]]) -> dict[Path, tuple[str, str]]:
    path = src / PATIENTS_FILE
    if not path.is_file():
        return {}
    frame = read_csv(path, "patients CSV")
    check_columns(frame, ("path", "patient_id"), path, "patients CSV")
    out: dict[Path, tuple[str, str]] = {}
    for i, cells in enumerate(frame.to_dict("records")):
        written, patient = str(cells["path"]).strip(), str(cells["patient_id"]).strip()
        try:
            image = folder.resolve(written, (AS_WRITTEN,), table=path, row=i + 2)
        except SourcePathError as exc:
            skipped.append(
                skip_entry(written, f"patients.csv names an image that does not exist: {exc.reason}", i + 2, path)
            )
            continue
        if not patient:
            skipped.append(skip_entry(written, "blank patient_id", i + 2, path))
            continue
        study = str(cells.get("study_id", "") or "").strip()
        out[image] = (patient, f"{patient}/{study}" if study else "")
    return out


def read_mask_folder(src: Path, labels: str | list[str] | None = None) -> SourceTable:
    """Read a folder of images and masks (see the module docstring)."""
    src = Path(src)
    if not src.is_dir():
        raise NotFoundError(f"mask-folder source not found or not a directory: {src}")
    folder = SourceFolder(src)
    declared = _read_structures(src)
    skipped: list[dict[str, Any]] = []
    patients = _read_patients(src, folder, skipped)
    if (src / COCO_FILE).is_file():
        records, structures = _read_coco(src / COCO_FILE, folder, declared, skipped)
        kind = "coco"
    elif (src / MASKS_FOLDER).is_dir():
        records, structures, kind = _read_masks(src, folder, declared, skipped)
    else:
        raise NotFoundError(
            f"no masks in {src}: expected a {MASKS_FOLDER}/ folder (PNG/TIFF masks or DICOM SEG) or {COCO_FILE} (COCO)"
        )
    selected = parse_label_list(labels, structures) or structures
    if selected != structures:
        records = [r for r in (_select(r, structures, selected) for r in records) if r is not None]
    for record in records:
        if record.path in patients:
            record.patient, record.study = patients[record.path]
            record.study = record.study or None
    return SourceTable(
        records=records,
        labels=selected,
        task="segmentation",
        root=src,
        skipped=skipped,
        info={
            "format": "masks",
            "masks": kind,
            "structures": selected,
            "patient_identity": "patients.csv, else DICOM PatientID, else one patient per image",
        },
    )


def _select(record: SourceRecord, structures: list[str], selected: list[str]) -> SourceRecord | None:
    """Keep only the selected structures of a record's mask (``--labels``); None when it annotates none of them."""
    spec = record.mask
    assert spec is not None
    keep = tuple(structures.index(s) for s in selected)
    if not set(keep) & set(spec.annotated):
        return None
    record.mask = replace(spec, keep=keep)
    return record


def _images(folder: SourceFolder, skipped: list[dict[str, Any]]) -> list[Path]:
    walk = folder.walk()
    skipped += [skip_entry(folder.relative(p), "links outside the source folder; not read") for p in walk.outside]
    images = []
    for path in walk.files:
        rel = folder.relative(path)
        if rel.split("/", 1)[0] in (MASKS_FOLDER,) or path.name.startswith("."):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
    return images


def _read_masks(
    src: Path, folder: SourceFolder, declared: list[str] | None, skipped: list[dict[str, Any]]
) -> tuple[list[SourceRecord], list[str], str]:
    images = {_stem(folder.relative(p)): p for p in _images(folder, skipped)}
    mask_root = src / MASKS_FOLDER
    singles: dict[str, Path] = {}
    per_structure: dict[str, dict[str, Path]] = {}
    segs: list[tuple[Path, pydicom.Dataset]] = []
    walk = folder.walk(mask_root)
    skipped += [skip_entry(folder.relative(p), "links outside the source folder; not read") for p in walk.outside]
    for path in walk.files:
        rel = folder.relative(path)[len(MASKS_FOLDER) + 1 :]
        suffix = path.suffix.lower()
        if path.name.startswith("."):
            continue
        if suffix in (".dcm", ".dicom") or not suffix:
            ds = _header(path)
            if ds is not None and str(ds.get("Modality", "")) == "SEG":
                segs.append((path, ds))
            continue
        if suffix not in MASK_SUFFIXES:
            continue
        stem = _stem(rel)
        if stem in images:
            singles[stem] = path
        elif "/" in stem and stem.rsplit("/", 1)[0] in images:
            per_structure.setdefault(stem.rsplit("/", 1)[0], {})[stem.rsplit("/", 1)[1]] = path
        else:
            skipped.append(
                skip_entry(folder.relative(path), "mask for an image that does not exist (no image of that path)")
            )
    if segs:
        return _read_segs(folder, images, segs, declared, skipped)
    if per_structure:
        structures = declared or sorted({name for files in per_structure.values() for name in files})
    else:
        structures = declared or [DEFAULT_STRUCTURE]
    records = []
    for stem, path in images.items():
        rel = folder.relative(path)
        if stem in singles and stem in per_structure:
            skipped.append(skip_entry(rel, "the image has both a mask file and a folder of per-structure masks"))
            continue
        if stem in singles:
            spec = MaskSpec("files", ((-1, str(singles[stem])),), tuple(structures), tuple(range(len(structures))))
        elif stem in per_structure:
            files = per_structure[stem]
            unknown = sorted(set(files) - set(structures))
            if unknown:
                hint = did_you_mean(unknown[0], structures)
                skipped.append(skip_entry(rel, f"mask file for unknown structure {unknown[0]!r}.{hint}"))
                continue
            items = tuple((structures.index(name), str(p)) for name, p in sorted(files.items()))
            spec = MaskSpec("files", items, tuple(structures), tuple(sorted(k for k, _ in items)))
        else:
            skipped.append(skip_entry(rel, f"no mask for this image in {MASKS_FOLDER}/ (same path, .png or .tif)"))
            continue
        records.append(SourceRecord(path=path, rel_path=rel, labels={}, mask=spec))
    return records, list(structures), "files"


def _read_segs(
    folder: SourceFolder,
    images: dict[str, Path],
    segs: list[tuple[Path, pydicom.Dataset]],
    declared: list[str] | None,
    skipped: list[dict[str, Any]],
) -> tuple[list[SourceRecord], list[str], str]:
    by_uid: dict[str, Path] = {}
    for path in images.values():
        if path.suffix.lower() in (".dcm", ".dicom"):
            ds = _header(path)
            if ds is not None and "SOPInstanceUID" in ds:
                by_uid[str(ds.SOPInstanceUID)] = path
    labels = sorted({str(s.SegmentLabel) for _, ds in segs for s in ds.get("SegmentSequence", [])})
    structures = declared or labels
    unknown = [label for label in labels if label not in structures]
    records = []
    for path, ds in segs:
        rel = folder.relative(path)
        uid = _seg_reference(ds)
        image = by_uid.get(uid or "")
        if image is None:
            skipped.append(skip_entry(rel, "DICOM SEG references a source image that is not in the source folder"))
            continue
        own = [str(s.SegmentLabel) for s in ds.get("SegmentSequence", [])]
        bad = [label for label in own if label in unknown]
        if bad:
            skipped.append(skip_entry(rel, f"DICOM SEG segment {bad[0]!r} is not in structures.txt"))
            continue
        annotated = tuple(sorted(structures.index(label) for label in own))
        spec = MaskSpec("seg", ((-1, str(path)),), tuple(structures), annotated)
        records.append(SourceRecord(path=image, rel_path=folder.relative(image), labels={}, mask=spec))
    return records, list(structures), "dicom-seg"


def _read_coco(
    path: Path, folder: SourceFolder, declared: list[str] | None, skipped: list[dict[str, Any]]
) -> tuple[list[SourceRecord], list[str]]:
    try:
        coco = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"COCO JSON cannot be parsed ({exc})", path=path) from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations")):
        raise DataError("COCO JSON needs 'images', 'annotations' and 'categories' lists", path=path)
    categories = sorted(coco.get("categories") or [], key=lambda c: int(c["id"]))
    if not categories:
        raise DataError("COCO JSON has no categories (the structures)", path=path)
    names = [str(c["name"]) for c in categories]
    structures = declared or names
    index = {int(c["id"]): structures.index(str(c["name"])) for c in categories if str(c["name"]) in structures}
    by_image: dict[int, list[tuple[int, Any]]] = {}
    known_ids = {int(image.get("id", -1)) for image in coco["images"] if isinstance(image, dict)}
    for n, ann in enumerate(coco["annotations"], start=1):
        image_id, category = int(ann.get("image_id", -1)), int(ann.get("category_id", -1))
        if image_id not in known_ids:
            skipped.append(skip_entry(None, f"annotation {n} is for image_id {image_id}, not in 'images'", n, path))
            continue
        if category not in index:
            skipped.append(skip_entry(None, f"annotation {n} has unknown category_id {category}", n, path))
            continue
        by_image.setdefault(image_id, []).append((index[category], ann.get("segmentation")))
    records = []
    for n, image in enumerate(coco["images"], start=1):
        written = str(image.get("file_name", ""))
        try:
            image_path = folder.resolve(written, (AS_WRITTEN, IN_IMAGES), table=path, row=n)
        except SourcePathError as exc:
            skipped.append(skip_entry(written, f"COCO image {n}: {exc.reason}", n, path))
            continue
        items = tuple(by_image.get(int(image.get("id", -1)), []))
        height, width = image.get("height"), image.get("width")
        size = (int(height), int(width)) if height and width else None
        spec = MaskSpec(
            "coco",
            items,
            tuple(structures),
            tuple(range(len(structures))),  # COCO annotates every category on every image it lists
            tuple(sorted({k for k, _ in items})),
            size,
        )
        records.append(
            SourceRecord(
                path=image_path, rel_path=folder.relative(image_path), labels={}, row=n, table=path.name, mask=spec
            )
        )
    return records, list(structures)
