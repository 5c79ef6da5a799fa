"""Readers of the box formats users have: RSNA Pneumonia, VinBigData, NIH ``BBox_List_2017.csv``, COCO JSON,
Label Studio rectangles.

Each reader turns its table (the CSV read as strings, its columns checked, by
:func:`radflow.data.sources.base.read_csv`; COCO: the JSON file) into :class:`ImageBoxes` per
image, keyed by the image's name as the file writes it (RSNA ``patientId``, VinBigData
``image_id``, NIH ``Image Index``, COCO ``file_name``), with every box in the original image's
pixels as :class:`radflow.data.boxes.SourceBox` corners
``x0, y0, x1, y1``. Nothing here needs the image: a row's own faults (a coordinate missing or not a
number, a negative or zero width or height, a label the format does not declare) are recorded on its
image as ``errors`` (row, message), and the source adapter skips that image, listing every bad row:
an image missing one of its boxes would train as if the finding were absent. Whether a box lies
inside its image is checked by ingest, once the image's size is known
(:func:`radflow.data.boxes.check_box`).

Negative images: RSNA rows with ``Target`` 0 and blank coordinates, VinBigData ``No finding`` rows,
COCO images without annotations, Label Studio tasks without a rectangle; NIH's list holds positive images only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from radflow.data.boxes import SourceBox
from radflow.errors import DataError, NotFoundError, did_you_mean

__all__ = [
    "NIH_BOX_LABELS",
    "NIH_COLUMNS",
    "RSNA_COLUMNS",
    "RSNA_LABEL",
    "VINBIG_COLUMNS",
    "VINBIG_LABELS",
    "VINBIG_NO_FINDING",
    "ImageBoxes",
    "read_coco_boxes",
    "read_label_studio_boxes",
    "read_nih_boxes",
    "read_rsna_boxes",
    "read_vinbig_boxes",
]

RSNA_LABEL = "Lung Opacity"
RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
VINBIG_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
NIH_COLUMNS = ("Image Index", "Finding Label")
"""The named columns of NIH's box list; the four after ``Finding Label`` are the box."""
VINBIG_LABELS = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
"""VinBigData's 14 findings in ``class_id`` order (0-13); ``class_id`` 14 is ``No finding``."""
VINBIG_NO_FINDING = "No finding"
NIH_BOX_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
"""NIH box list findings, named as in ``Data_Entry_2017.csv`` (the list's ``Infiltrate`` is ``Infiltration``)."""
_NIH_ALIASES = {"Infiltrate": "Infiltration"}


@dataclass
class ImageBoxes:
    """One image's boxes as a box file gives them (original pixels), and the rows that could not be read."""

    row: int
    """The first row (CSV line, header = 1; COCO: the image's index in ``images``) naming the image."""
    boxes: list[SourceBox] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    readers: set[str] = field(default_factory=set)
    """Readers who read the image, also those who found nothing (VinBigData)."""


def _number(cells: Mapping[Any, Any], column: str) -> float:
    text = str(cells.get(column, "")).strip()
    if not text:
        raise DataError(f"{column} is blank")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{column} is not a finite number: {text!r}")
    return value


def _corners(x0: float, y0: float, x1: float, y1: float, label: str, row: int, reader: str = "") -> SourceBox:
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"box {label!r} has a width or height that is not positive ({x1 - x0:g} x {y1 - y0:g})")
    return SourceBox(label, x0, y0, x1, y1, reader, row)


def _declared(name: str, labels: Sequence[str], aliases: dict[str, str] | None = None) -> str:
    label = (aliases or {}).get(name, name)
    if label not in labels:
        raise DataError(f"label {name!r} is not declared (known: {', '.join(labels)}).{did_you_mean(name, labels)}")
    return label


def _image(images: dict[str, ImageBoxes], key: str, row: int) -> ImageBoxes:
    return images.setdefault(key, ImageBoxes(row))


def read_rsna_boxes(frame: pd.DataFrame, path: Path) -> dict[str, ImageBoxes]:
    """RSNA Pneumonia ``stage_2_train_labels.csv``: ``patientId,x,y,width,height,Target``, a row per box.

    ``Target`` 1 rows are ``Lung Opacity`` boxes; a ``Target`` 0 row (coordinates blank) marks a negative image.
    """
    images: dict[str, ImageBoxes] = {}
    for i, cells in enumerate(frame.to_dict("records")):
        line, key = i + 2, str(cells["patientId"]).strip()
        if not key:
            raise DataError("blank patientId", path, line)
        image = _image(images, key, line)
        try:
            target = str(cells["Target"]).strip()
            if target not in ("0", "1"):
                raise DataError(f"Target must be 0 or 1, got {target!r}")
            if target == "1":
                x, y = _number(cells, "x"), _number(cells, "y")
                w, h = _number(cells, "width"), _number(cells, "height")
                image.boxes.append(_corners(x, y, x + w, y + h, RSNA_LABEL, line))
        except DataError as exc:
            image.errors.append((line, str(exc)))
    return images


def read_vinbig_boxes(frame: pd.DataFrame, path: Path) -> dict[str, ImageBoxes]:
    """VinBigData ``train.csv``: ``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``, a row per box
    and reader; ``No finding`` rows say that reader found nothing. Each box keeps its reader (``rad_id``)."""
    images: dict[str, ImageBoxes] = {}
    for i, cells in enumerate(frame.to_dict("records")):
        line, key = i + 2, str(cells["image_id"]).strip()
        if not key:
            raise DataError("blank image_id", path, line)
        image = _image(images, key, line)
        try:
            reader = str(cells["rad_id"]).strip()
            if not reader:
                raise DataError("rad_id is blank (every box needs its reader)")
            image.readers.add(reader)
            name = str(cells["class_name"]).strip()
            if name == VINBIG_NO_FINDING:
                continue
            label = _declared(name, VINBIG_LABELS)
            x0, y0 = _number(cells, "x_min"), _number(cells, "y_min")
            x1, y1 = _number(cells, "x_max"), _number(cells, "y_max")
            image.boxes.append(_corners(x0, y0, x1, y1, label, line, reader))
        except DataError as exc:
            image.errors.append((line, str(exc)))
    return images


def read_nih_boxes(frame: pd.DataFrame, path: Path) -> dict[str, ImageBoxes]:
    """NIH ``BBox_List_2017.csv``: ``Image Index, Finding Label, Bbox [x,y,w,h]`` (the bracketed header
    splits into four columns; trailing empty columns are ignored), a row per box."""
    if len(frame.columns) < 6:
        raise DataError(
            "NIH box list CSV needs the columns Image Index, Finding Label, Bbox [x,y,w,h]; "
            f"found {list(frame.columns)}",
            path,
        )
    start = list(frame.columns).index("Finding Label") + 1
    coords = dict(zip(("x", "y", "w", "h"), list(frame.columns)[start : start + 4], strict=True))
    images: dict[str, ImageBoxes] = {}
    for i, cells in enumerate(frame.to_dict("records")):
        line, key = i + 2, str(cells["Image Index"]).strip()
        if not key:
            raise DataError("blank Image Index", path, line)
        image = _image(images, key, line)
        try:
            label = _declared(str(cells["Finding Label"]).strip(), NIH_BOX_LABELS, _NIH_ALIASES)
            bbox = {f"Bbox {c}": cells[column] for c, column in coords.items()}  # the header's names are split
            x, y, w, h = (_number(bbox, f"Bbox {c}") for c in "xywh")
            image.boxes.append(_corners(x, y, x + w, y + h, label, line))
        except DataError as exc:
            image.errors.append((line, str(exc)))
    return images


def read_coco_boxes(path: Path) -> tuple[dict[str, ImageBoxes], list[str], list[tuple[int, str]]]:
    """COCO JSON ``bbox`` annotations (``[x, y, width, height]``): images by ``file_name``, the categories in id
    order as the labels, and the annotations that name no image (index, message)."""
    if not path.is_file():
        raise NotFoundError(f"COCO JSON not found: {path}")
    try:
        coco = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        files = {int(im["id"]): (str(im["file_name"]), k) for k, im in enumerate(coco["images"])}
        annotations = list(coco.get("annotations", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a COCO JSON with images and categories ({type(exc).__name__}: {exc})", path) from None
    if not categories:
        raise DataError("COCO JSON declares no category", path)
    labels = [categories[k] for k in sorted(categories)]
    images = {name: ImageBoxes(k) for name, k in files.values()}
    orphans: list[tuple[int, str]] = []
    for k, ann in enumerate(annotations):
        try:
            image_id = int(ann["image_id"])
        except (KeyError, TypeError, ValueError):
            orphans.append((k, f"annotation {k} has no integer image_id"))
            continue
        if image_id not in files:
            orphans.append((k, f"annotation {k} is a box for image id {image_id}, which the JSON does not list"))
            continue
        image = images[files[image_id][0]]
        try:
            category = ann.get("category_id")
            if not isinstance(category, int) or category not in categories:
                raise DataError(f"category_id {category!r} is not declared in categories ({', '.join(labels)})")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DataError(f"bbox must be [x, y, width, height], got {bbox!r}")
            x, y, w, h = (_number({"bbox": v}, "bbox") for v in bbox)
            image.boxes.append(_corners(x, y, x + w, y + h, categories[category], k))
        except DataError as exc:
            image.errors.append((k, f"annotation {k}: {exc}"))
    return images, labels, orphans


def read_label_studio_boxes(
    path: Path, declared: Sequence[str] | None = None
) -> tuple[dict[str, ImageBoxes], list[str], bool]:
    """A Label Studio JSON export's ``rectanglelabels`` results: images by ``data.image``, each annotation
    its own reader (``completed_by``), box values in percent of ``original_width``/``original_height``.

    ``declared``: the labels a box may have (the labelling config's, from ``labels.txt``); without it
    every label used is declared. Returns the images, the labels (``declared``, else in order of first
    use) and whether any task has several annotations (then every annotation's boxes are kept under
    its reader and fused for training). A rotated rectangle is an error (not an axis-aligned box); a
    task without a result is a negative image.
    """
    if not path.is_file():
        raise NotFoundError(f"Label Studio JSON export not found: {path}")
    try:
        tasks = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"not JSON ({exc})", path) from None
    if not isinstance(tasks, list):
        raise DataError("a Label Studio JSON export is a list of tasks", path)
    images: dict[str, ImageBoxes] = {}
    labels: list[str] = []
    multi = False
    for t, task in enumerate(tasks):
        image_ref = task.get("data", {}).get("image") if isinstance(task, dict) else None
        if not isinstance(image_ref, str) or not image_ref.strip():
            raise DataError(f"task {t} has no data.image", path)
        image = _image(images, image_ref.strip(), t)
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        multi = multi or len(annotations) > 1
        for k, annotation in enumerate(annotations):
            reader = str(annotation.get("completed_by", k))
            image.readers.add(reader)
            for result in annotation.get("result", []):
                if result.get("type") != "rectanglelabels":
                    continue
                try:
                    value = result.get("value", {})
                    if float(value.get("rotation", 0) or 0) != 0:
                        raise DataError(
                            f"a rectangle rotated by {value['rotation']} degrees is not an axis-aligned box"
                        )
                    names = value.get("rectanglelabels") or []
                    if len(names) != 1:
                        raise DataError(f"a rectangle needs exactly one label, got {names!r}")
                    label = _declared(str(names[0]), declared) if declared is not None else str(names[0])
                    if label not in labels:
                        labels.append(label)
                    sx = _number(result, "original_width") / 100
                    sy = _number(result, "original_height") / 100
                    x, y = _number(value, "x") * sx, _number(value, "y") * sy
                    w, h = _number(value, "width") * sx, _number(value, "height") * sy
                    image.boxes.append(_corners(x, y, x + w, y + h, label, t, reader))
                except DataError as exc:
                    image.errors.append((t, f"task {t}: {exc}"))
    if not multi:  # one reader per image: the boxes are the training set itself
        for image in images.values():
            image.boxes = [replace(b, reader="") for b in image.boxes]
            image.readers = set()
    return images, (list(declared) if declared is not None else labels), multi
