"""Detection sources (task ``detection``): a box file and its images, one adapter per layout.

* ``rsna-boxes``: RSNA Pneumonia, ``stage_2_train_labels.csv`` and ``<patientId>.dcm`` anywhere below
  SRC (``stage_2_train_images/``); one label, ``Lung Opacity``; the patient is ``patientId``.
* ``vinbig``: VinBigData, ``train.csv`` and ``<image_id>.dicom`` (or ``.dcm``/``.png``/``.jpg`` exports)
  anywhere below SRC; several readers per image: each reader's boxes are kept (``reader`` = ``rad_id``)
  and the training set is their fusion (:func:`radflow.data.boxes.fuse_boxes`).
* ``nih-boxes``: NIH ``BBox_List_2017.csv`` and its images by ``Image Index`` anywhere below SRC; the
  patient is the file name's prefix (``00000001_000.png`` -> ``00000001``), as in ``Data_Entry_2017.csv``.
* ``label-studio``: a Label Studio JSON export (the one ``*.json`` in SRC, or the JSON given as SRC) with
  ``rectanglelabels`` results; images by the file name of ``data.image`` anywhere below SRC (also without
  the 8-character prefix Label Studio gives uploads); ``labels.txt`` (one a line), if present, declares
  the labels; several annotations of a task are several readers (``completed_by``), kept and fused.
* ``coco-boxes``: a COCO JSON (``annotations.json`` in SRC, or the JSON given as SRC) with ``bbox``
  annotations; images by ``file_name`` below the JSON's folder or its ``images/``; categories are labels.

Rows are read by :mod:`radflow.data.boxfiles`. An image whose rows hold a bad one is skipped with an
entry per bad row; a row naming an image that is not in the folder is skipped the same way. Each
record carries its boxes in original pixels; ingest checks them against the image's size and maps
them to training size (:mod:`radflow.data.boxes`). ``--labels`` keeps the boxes of those labels only.
Patient identity, where the layout gives none: the DICOM header's PatientID, else one per image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from radflow.data.boxes import FUSION_IOU
from radflow.data.boxfiles import (
    NIH_BOX_LABELS,
    NIH_COLUMNS,
    RSNA_COLUMNS,
    RSNA_LABEL,
    VINBIG_COLUMNS,
    VINBIG_LABELS,
    ImageBoxes,
    read_coco_boxes,
    read_label_studio_boxes,
    read_nih_boxes,
    read_rsna_boxes,
    read_vinbig_boxes,
)
from radflow.data.labels import parse_label_list
from radflow.data.sources.base import SourceRecord, SourceTable, check_columns, read_csv, skip_entry
from radflow.data.sources.maskfolder import IN_IMAGES
from radflow.data.sources.paths import AS_WRITTEN, SourceFolder, SourcePathError
from radflow.errors import NotFoundError

__all__ = [
    "read_coco_box_source",
    "read_label_studio_source",
    "read_nih_box_source",
    "read_rsna_box_source",
    "read_vinbig_source",
]

LABELS_FILE = "labels.txt"
COCO_BOX_FILE = "annotations.json"


def _file(src: Path, names: tuple[str, ...], what: str) -> Path:
    if src.is_file():
        return src
    if not src.exists():
        raise NotFoundError(f"{what} source not found: {src}")
    for name in names:
        if (src / name).is_file():
            return src / name
    raise NotFoundError(f"no {what} file in {src}: expected {' or '.join(names)}")


def _csv(path: Path, what: str, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = read_csv(path, what)
    check_columns(frame, columns, path, what)
    return frame


def _records(
    fmt: str,
    images: dict[str, ImageBoxes],
    table: Path,
    locate: Callable[[str, int], Path],
    folder: SourceFolder,
    declared: list[str],
    labels: str | list[str] | None,
    patient: Callable[[str], str | None] = lambda key: None,
    skipped: list[dict[str, Any]] | None = None,
    multi_reader: bool = False,
) -> SourceTable:
    """The detection table of parsed box files: images located, bad images skipped, presence labels set."""
    selected = parse_label_list(labels, declared) or list(declared)
    skipped = list(skipped or [])
    records: list[SourceRecord] = []
    for key, image in images.items():
        try:
            path = locate(key, image.row)
        except SourcePathError as exc:
            skipped.append(skip_entry(key, f"boxes for an image that does not exist: {exc.reason}", image.row, table))
            continue
        rel = folder.relative(path)
        if image.errors:
            skipped += [skip_entry(rel, message, row, table) for row, message in image.errors]
            continue
        boxes = tuple(b for b in image.boxes if b.label in selected)
        records.append(
            SourceRecord(
                path=path,
                rel_path=rel,
                labels={label: float(any(b.label == label for b in boxes)) for label in selected},
                patient=patient(key),
                row=image.row,
                table=table.name,
                boxes=boxes,
                readers=tuple(sorted(image.readers)),
            )
        )
    info: dict[str, Any] = {"format": fmt, "box_labels": selected, "multi_reader": multi_reader}
    if multi_reader:
        info["fusion"] = {
            "method": "weighted box fusion, readers weighted equally, every cluster kept",
            "iou": FUSION_IOU,
        }
    return SourceTable(records, selected, "detection", folder.root, skipped, info)


def _by_name(folder: SourceFolder, table: Path, suffixes: tuple[str, ...]) -> Callable[[str, int], Path]:
    def locate(key: str, row: int) -> Path:
        names = [key] if not suffixes else [key + s for s in suffixes]
        return folder.find(names, written=key, table=table, row=row)

    return locate


def read_rsna_box_source(src: Path, labels: str | list[str] | None = None) -> SourceTable:
    """RSNA Pneumonia boxes (see the module docstring)."""
    csv_path = _file(Path(src), ("stage_2_train_labels.csv", "stage_1_train_labels.csv"), "RSNA Pneumonia")
    folder = SourceFolder(csv_path.parent)
    locate = _by_name(folder, csv_path, (".dcm", ".dicom", ".png", ".jpg"))
    images = read_rsna_boxes(_csv(csv_path, "RSNA box CSV", RSNA_COLUMNS), csv_path)
    return _records("rsna-boxes", images, csv_path, locate, folder, [RSNA_LABEL], labels, patient=lambda key: key)


def read_vinbig_source(src: Path, labels: str | list[str] | None = None) -> SourceTable:
    """VinBigData boxes from several readers (see the module docstring)."""
    csv_path = _file(Path(src), ("train.csv",), "VinBigData")
    folder = SourceFolder(csv_path.parent)
    locate = _by_name(folder, csv_path, (".dicom", ".dcm", ".png", ".jpg"))
    images = read_vinbig_boxes(_csv(csv_path, "VinBigData box CSV", VINBIG_COLUMNS), csv_path)
    return _records("vinbig", images, csv_path, locate, folder, list(VINBIG_LABELS), labels, multi_reader=True)


def read_nih_box_source(src: Path, labels: str | list[str] | None = None) -> SourceTable:
    """NIH ChestX-ray14 boxes (see the module docstring)."""
    csv_path = _file(Path(src), ("BBox_List_2017.csv",), "NIH box list")
    folder = SourceFolder(csv_path.parent)
    images = read_nih_boxes(_csv(csv_path, "NIH box list CSV", NIH_COLUMNS), csv_path)
    return _records(
        "nih-boxes",
        images,
        csv_path,
        _by_name(folder, csv_path, ()),
        folder,
        list(NIH_BOX_LABELS),
        labels,
        patient=lambda key: key.split("_", 1)[0] if "_" in key else None,
    )


def read_coco_box_source(src: Path, labels: str | list[str] | None = None) -> SourceTable:
    """COCO JSON boxes (see the module docstring)."""
    json_path = _file(Path(src), (COCO_BOX_FILE,), "COCO box")
    folder = SourceFolder(json_path.parent)
    images, declared, orphans = read_coco_boxes(json_path)

    def locate(key: str, row: int) -> Path:
        return folder.resolve(key, (AS_WRITTEN, IN_IMAGES), table=json_path, row=row)

    skipped = [skip_entry(None, message, row, json_path) for row, message in orphans]
    return _records("coco-boxes", images, json_path, locate, folder, declared, labels, skipped=skipped)


def _upload_names(ref: str) -> list[str]:
    """File names a Label Studio ``data.image`` may have on disk: as uploaded, and without the upload prefix."""
    name = ref.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    head, dash, rest = name.partition("-")
    plain = rest if dash and len(head) == 8 and all(c in "0123456789abcdef" for c in head) and rest else None
    return [name] if plain is None else [name, plain]


def read_label_studio_source(src: Path, labels: str | list[str] | None = None) -> SourceTable:
    """Label Studio rectangles (see the module docstring)."""
    src = Path(src)
    if src.is_dir():
        found = sorted(src.glob("*.json"))
        if len(found) != 1:
            what = "none" if not found else ", ".join(p.name for p in found)
            raise NotFoundError(f"expected one Label Studio JSON export in {src}, found {what}; give the file as SRC")
        src = found[0]
    json_path = _file(src, (), "Label Studio")
    folder = SourceFolder(json_path.parent)
    declared_file = json_path.parent / LABELS_FILE
    declared = None
    if declared_file.is_file():
        declared = [line.strip() for line in declared_file.read_text().splitlines() if line.strip()]
    images, found_labels, multi = read_label_studio_boxes(json_path, declared)

    def locate(key: str, row: int) -> Path:
        return folder.find(_upload_names(key), written=key, table=json_path, row=row)

    return _records("label-studio", images, json_path, locate, folder, found_labels, labels, multi_reader=multi)
