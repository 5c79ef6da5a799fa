"""Crop datasets for a workflow's crop -> classify (or regress) step: each labelled box cut as the workflow cuts
it when serving.

A workflow such as detect -> crop -> classify trains its classifier on crops of the boxes the detector
learnt. :func:`build_crops` makes that classification dataset from

* a **box table**: a COCO JSON (``annotations.json``, boxes as ``bbox``, per-box attributes as keys of the
  annotation or of its ``attributes`` dict) or a CSV with ``path, x, y, width, height`` and attribute
  columns (``vertebrae.csv`` of ``radflow synth spine``), paths below the table's folder (or its
  ``images/``) as ``radflow ingest`` reads them; one attribute (0/1) is the crop's label, others
  (``keep``) stay per crop in ``crops.parquet``;
* the **detection dataset** ingested from the same images, which says who each image belongs to and
  where it went in the split: an image is found there by its file's sha256, and every crop of it keeps
  its patient, study, split and official split (the crops of a test image are test crops, and a later
  ``radflow split`` of the crops keeps them there). A table image the dataset does not hold is skipped
  and listed.

A **mask table** (segment -> crop by mask -> regress, e.g. bone age) has one box per image: the extent of
one structure's mask (``masks``: a mask source in ``--format masks`` layout, read at the image's own size),
with the image's values from a per-image CSV (:func:`read_value_table`: ``path`` or RSNA bone age's ``id``
column, then the fields; ``sex_field`` such as RSNA's ``male`` gives each crop its sex, the regression's
second input). Its label may be continuous (``task="regression"``: a finite number, e.g. months). An image
whose mask is empty has no box and is skipped and listed.

The cut is :func:`radflow.workflow.glue.crop_boxes` (``margin`` a fraction of the box's side, clipped
to the image) on the decoded original image, or :func:`radflow.workflow.glue.crop_masks` on the mask's
extent (the COCO ``bbox`` :func:`radflow.runtime.masks.bounding_box` gives, as a segmentation answer's),
then :func:`radflow.workflow.glue.resize_crops` to ``size``: the pixels a served workflow's crop and resize
steps give the next model for the same box or mask.

``crops.parquet`` (one row per crop, keyed by the manifest's ``image_id``): ``source_image_id``,
``x0, y0, x1, y1`` (the box, original pixels), ``cut_x0 .. cut_y1`` (the cut, margin included,
exclusive ends) and the kept attributes as text. Bad input (an unknown column or field, a box
field missing or outside the image, a label that is not 0/1) is an error naming the table, row or
annotation, and the field.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radflow.config import WorkflowStepConfig
from radflow.data.dataset import MANIFEST_COLUMNS, SHARD_DIR, SPLITS, Dataset, ShardWriter, write_dataset
from radflow.data.decode import decode_image
from radflow.data.maskfiles import MaskSpec, load_mask
from radflow.data.preprocess import PreprocessSpec, training_spacing
from radflow.data.sources.maskfolder import IN_IMAGES, read_mask_folder
from radflow.data.sources.paths import AS_WRITTEN, SourceFolder, SourcePathError
from radflow.data.split import EXTRA_SPLIT
from radflow.errors import ConfigError, DataError, NotFoundError, did_you_mean
from radflow.runtime.masks import bounding_box
from radflow.workflow.glue import crop_boxes, crop_masks, resize_crops

__all__ = [
    "CROPS_FILE",
    "CROP_TASKS",
    "BoxTable",
    "LabelledBox",
    "build_crops",
    "mask_boxes",
    "read_box_table",
    "read_mask_table",
    "read_value_table",
    "sex_value",
    "table_images",
]

CROPS_FILE = "crops.parquet"
DEFAULT_MARGIN: float = WorkflowStepConfig.model_fields["margin"].default
"""A crop step's own default margin, so a crop dataset built with defaults matches a workflow declared with them."""
CSV_BOX_COLUMNS = ("path", "x", "y", "width", "height")
VALUE_KEYS = ("path", "id")
"""A per-image table's image column: ``path`` (below the table's folder), or ``id`` (RSNA bone age: ``<id>.png``,
``.jpg`` or ``.dcm`` anywhere below it)."""
ID_EXTENSIONS = (".png", ".jpg", ".dcm")
CROP_TASKS = ("multilabel", "regression")
"""What a crop's label is: 0/1 (a per-crop classifier) or a finite number (a per-crop regressor)."""


@dataclass
class LabelledBox:
    """One box of the table: original pixels, where it was written, and its attributes as written."""

    box: tuple[float, float, float, float]
    """``x0, y0, x1, y1`` in the image's pixel edges."""
    where: str
    """``TABLE, row N`` (CSV, header = 1) or ``TABLE, annotation K (id N)`` (COCO), for messages."""
    values: dict[str, Any]
    structure: str | None = None
    """A mask table's box: the extent of this structure's mask, cut as a crop by mask step cuts it."""


@dataclass
class TableImage:
    """One image the table names: its file (inside the table's folder) and its boxes."""

    written: str
    path: Path | None
    """None: the file is not in the folder (``missing`` says why, without the path)."""
    boxes: list[LabelledBox] = field(default_factory=list)
    missing: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    """A per-image table's fields for this image (:func:`read_value_table`)."""
    where: str = ""
    """A per-image table's row, for messages."""
    mask: MaskSpec | None = None
    """A mask table's mask of the image (narrowed to its structure): the box is its extent, at the image's size."""


@dataclass
class BoxTable:
    """A box table read and checked: its images in table order."""

    path: Path
    images: list[TableImage]


def _fail(where: str, why: str) -> DataError:
    return DataError(f"{where}: {why}")


def _number(value: Any, where: str, name: str) -> float:
    """A finite number of field ``name``, else the error naming the place and the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _fail(where, f"field {name!r} is missing")
    if isinstance(value, bool):
        raise _fail(where, f"field {name!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(where, f"field {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise _fail(where, f"field {name!r} must be a finite number, got {value!r}")
    return number


def _corners(x: Any, y: Any, w: Any, h: Any, where: str) -> tuple[float, float, float, float]:
    x0, y0 = _number(x, where, "x"), _number(y, where, "y")
    width, height = _number(w, where, "width"), _number(h, where, "height")
    if width <= 0 or height <= 0:
        raise _fail(where, f"the box has no area (width {width:g}, height {height:g}); both must be positive")
    return x0, y0, x0 + width, y0 + height


def _unknown(table: Path, name: str, known: Sequence[str], what: str) -> DataError:
    return DataError(f"no {what} {name!r} (it has {', '.join(known) or 'none'}).{did_you_mean(name, known)}", table)


def _read_csv_table(path: Path, fields: Sequence[str]) -> list[tuple[str, LabelledBox]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        columns = [str(c).strip() for c in reader.fieldnames or []]
        for name in (*CSV_BOX_COLUMNS, *fields):
            if name not in columns:
                raise _unknown(path, name, columns, "column")
        out = []
        for line, raw in enumerate(reader, start=2):
            row = {str(k).strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if k is not None}
            where = f"{path}, row {line}"
            box = _corners(row["x"], row["y"], row["width"], row["height"], where)
            if not row["path"]:
                raise _fail(where, "field 'path' is missing")
            out.append((str(row["path"]), LabelledBox(box, where, {f: row.get(f) for f in fields})))
    return out


def _annotation_fields(ann: dict[str, Any]) -> dict[str, Any]:
    """An annotation's attributes: its own keys, then those of its ``attributes`` dict (CVAT/Label Studio style)."""
    nested = ann.get("attributes")
    return {**ann, **(nested if isinstance(nested, dict) else {})}


def _read_coco_table(
    path: Path, fields: Sequence[str], box_label: str | None
) -> tuple[list[str], list[tuple[str, LabelledBox]]]:
    try:
        coco = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        files = {int(im["id"]): str(im["file_name"]) for im in coco["images"]}
        annotations = list(coco.get("annotations", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a COCO JSON with images and categories ({type(exc).__name__}: {exc})", path) from None
    if box_label is not None and box_label not in categories.values():
        raise _unknown(path, box_label, list(categories.values()), "category")
    present = {k for ann in annotations if isinstance(ann, dict) for k in _annotation_fields(ann)}
    for name in fields:
        if name not in present:
            known = sorted(present - {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "attributes"})
            raise _unknown(path, name, known, "annotation field")
    out = []
    for k, ann in enumerate(annotations):
        where = f"{path}, annotation {k}" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict):
            raise _fail(where, "an annotation must be an object")
        image_id = ann.get("image_id")
        if not isinstance(image_id, int) or image_id not in files:
            raise _fail(where, f"field 'image_id' {image_id!r} names no image of the JSON")
        if box_label is not None and categories.get(ann.get("category_id", -1)) != box_label:
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise _fail(where, f"field 'bbox' must be [x, y, width, height], got {bbox!r}")
        values = _annotation_fields(ann)
        corners = _corners(bbox[0], bbox[1], bbox[2], bbox[3], where)
        out.append((files[image_id], LabelledBox(corners, where, {f: values.get(f) for f in fields})))
    return list(files.values()), out


def read_box_table(table: Path, fields: Sequence[str], box_label: str | None = None) -> BoxTable:
    """The images and boxes of a COCO JSON or a CSV box table with the per-box ``fields`` of each box.

    ``table`` may be the file or a folder holding ``annotations.json``. ``box_label``: only COCO boxes of
    that category. A COCO JSON lists every image (those without a box too); a CSV the images with a box.
    Raises :class:`DataError` for an unknown column or field, a box field that is missing, not a
    number or without area, naming the table and row (annotation) and the field.
    """
    path = Path(table)
    if path.is_dir():
        path = path / "annotations.json"
    if not path.is_file():
        raise NotFoundError(f"box table not found: {path} (a COCO JSON or a CSV with {', '.join(CSV_BOX_COLUMNS)})")
    if path.suffix.lower() == ".json":
        names, rows = _read_coco_table(path, fields, box_label)
    else:
        if box_label is not None:
            raise ConfigError(f"a box label ({box_label!r}) selects COCO categories; {path.name} is a CSV")
        names, rows = [], _read_csv_table(path, fields)
    folder = SourceFolder(path.parent)
    images: dict[str, TableImage] = {}
    for name in [*names, *(written for written, _ in rows)]:
        if name in images:
            continue
        try:
            images[name] = TableImage(name, folder.resolve(name, (AS_WRITTEN, IN_IMAGES), table=path))
        except SourcePathError as exc:
            images[name] = TableImage(name, None, missing=exc.reason)
    for written, box in rows:
        images[written].boxes.append(box)
    return BoxTable(path, list(images.values()))


def read_value_table(table: Path, fields: Sequence[str]) -> BoxTable:
    """A per-image CSV: each image (column ``path`` or RSNA's ``id``, see :data:`VALUE_KEYS`) with its ``fields``.

    The images have no boxes (a mask table adds them: :func:`read_mask_table`); an image named twice, an
    unknown column or an empty image cell is an error naming the table, row and field. A file not found is
    listed as missing (skipped later), as a box table's.
    """
    path = Path(table)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.csv") if "test" not in p.name.lower())
        if not found:
            raise NotFoundError(f"no per-image CSV in {path} (columns {' or '.join(VALUE_KEYS)}, then the fields)")
        path = found[0]
    if not path.is_file():
        raise NotFoundError(f"per-image table not found: {path} (a CSV with a {' or '.join(VALUE_KEYS)} column)")
    folder = SourceFolder(path.parent)
    images: dict[str, TableImage] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        columns = [str(c).strip() for c in reader.fieldnames or []]
        key = next((k for k in VALUE_KEYS if k in columns), None)
        if key is None:
            raise _unknown(path, VALUE_KEYS[0], columns, "image column (path, or id as in RSNA bone age)")
        for name in fields:
            if name not in columns:
                raise _unknown(path, name, columns, "column")
        for line, raw in enumerate(reader, start=2):
            row = {str(k).strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if k is not None}
            where = f"{path}, row {line}"
            written = str(row.get(key) or "")
            if not written:
                raise _fail(where, f"field {key!r} is missing")
            if written in images:
                raise _fail(where, f"image {written!r} is named twice (also {images[written].where})")
            image = TableImage(written, None, values={f: row.get(f) for f in fields}, where=where)
            try:
                if key == "id":
                    names = [written + ext for ext in ID_EXTENSIONS]
                    image.path = folder.find(names, written=written, table=path, row=line)
                else:
                    image.path = folder.resolve(written, (AS_WRITTEN, IN_IMAGES), table=path)
            except SourcePathError as exc:
                image.missing = exc.reason
            images[written] = image
    return BoxTable(path, list(images.values()))


def read_mask_table(table: Path, masks: Path, fields: Sequence[str], structure: str | None = None) -> BoxTable:
    """A per-image table (:func:`read_value_table`) whose images each take ``structure``'s mask from ``masks``.

    ``masks``: a mask source in ``radflow ingest --format masks`` layout (PNG/TIFF files, DICOM SEG or a COCO
    JSON; :func:`radflow.data.sources.maskfolder.read_mask_folder`), matched to the table's images by file;
    ``structure``: the structure whose extent is the box (default: the source's only one). A table image
    without a mask there is listed as missing.
    """
    values = read_value_table(table, fields)
    source = read_mask_folder(Path(masks))
    if structure is None:
        if len(source.labels) != 1:
            raise ConfigError(
                f"the masks in {masks} hold {', '.join(source.labels)}; name the structure to crop by (--structure)."
            )
        structure = source.labels[0]
    if structure not in source.labels:
        raise _unknown(Path(masks), structure, source.labels, "structure")
    index = source.labels.index(structure)
    specs = {}
    for record in source.records:
        if record.mask is not None and index in record.mask.annotated:
            specs[Path(record.path).resolve()] = replace(record.mask, keep=(index,))
    for image in values.images:
        if image.path is None:
            continue
        image.mask = specs.get(image.path.resolve())
        if image.mask is None:
            image.missing = f"no {structure} mask for this image in {Path(masks).name}"
        image.values = {**image.values, "structure": structure}
    return values


def mask_boxes(image: TableImage, height: int, width: int) -> list[LabelledBox]:
    """A mask table image's one box, its structure's mask extent at the image's ``height`` x ``width`` (``[]``
    when the mask is empty): the COCO ``bbox`` a segmentation answer gives, as corners."""
    assert image.mask is not None
    try:
        mask = load_mask(image.mask, height, width)[0]
    except DataError as exc:
        raise _fail(image.where, f"the image's mask: {exc}") from None
    bbox = bounding_box(mask)
    if bbox is None:
        return []
    x, y, w, h = (float(v) for v in bbox)
    return [LabelledBox((x, y, x + w, y + h), image.where, image.values, str(image.values["structure"]))]


def sex_value(value: Any, where: str, name: str) -> str:
    """Sex as the manifest writes it (``M`` / ``F``) from a field such as RSNA's ``male`` (True/False, 1/0) or M/F."""
    text = "" if value is None else str(value).strip().lower()
    if text in ("true", "1", "m", "male"):
        return "M"
    if text in ("false", "0", "f", "female"):
        return "F"
    raise _fail(where, f"field {name!r} must be True/False (male), 1/0 or M/F, got {value!r}")


def target_value(value: Any, where: str, name: str, task: str) -> float:
    """A crop's label: 0/1 for a classifier (:func:`binary_value`), a finite number for a regressor."""
    return binary_value(value, where, name) if task == "multilabel" else _number(value, where, name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_images(table: BoxTable, dataset: Dataset) -> tuple[list[tuple[TableImage, int]], list[dict[str, Any]]]:
    """Each table image found in ``dataset`` (by file sha256) with its manifest row, and those skipped.

    Skipped entries name the table and why (never the path: it can name a patient).
    """
    rows = {sha: i for i, sha in reversed(list(enumerate(dataset.manifest["sha256"].astype(str))))}
    found, skipped = [], []
    for image in table.images:
        if image.path is None or image.missing is not None:
            skipped.append({"table": table.path.name, "boxes": len(image.boxes), "error": image.missing})
            continue
        row = rows.get(_sha256(image.path))
        if row is None:
            skipped.append(
                {"table": table.path.name, "boxes": len(image.boxes), "error": "image not in the dataset (by sha256)"}
            )
            continue
        found.append((image, row))
    return found, skipped


def binary_value(value: Any, where: str, name: str) -> float:
    """A 0/1 label (numbers, booleans, '0'/'1', 'true'/'false'), else the error naming the place and field."""
    if (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    ):
        raise _fail(where, f"field {name!r} is missing")
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in ("true", "false"):
        return 1.0 if text == "true" else 0.0
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise _fail(where, f"field {name!r} must be 0 or 1, got {value!r}")
    return number


def _check_inside(box: LabelledBox, height: int, width: int) -> None:
    """A box must lie inside its image (pixel edges: ``0 <= x0``, ``x1 <= width``); the error names the fields."""
    x0, y0, x1, y1 = box.box
    outside = [
        text
        for bad, text in (
            (x0 < 0, f"x = {x0:g} < 0"),
            (y0 < 0, f"y = {y0:g} < 0"),
            (x1 > width, f"x + width = {x1:g} > {width}"),
            (y1 > height, f"y + height = {y1:g} > {height}"),
        )
        if bad
    ]
    if outside:
        raise _fail(
            box.where, f"the box lies outside its {width} x {height} (width x height) image: {'; '.join(outside)}"
        )


def _crop_id(image_id: str, index: int, box: tuple[float, float, float, float]) -> str:
    """A crop's ``image_id``: its image's, the box's place in the table and its corners, hashed (20 hex digits)."""
    return hashlib.sha256(f"{image_id}:{index}:{','.join(f'{v:g}' for v in box)}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class _Labels:
    """How a crop is labelled: ``label`` read as ``task`` says, ``keep`` kept, ``sex_field`` giving its sex."""

    label: str
    keep: Sequence[str]
    task: str = "multilabel"
    sex_field: str | None = None


def _cut(pixels: np.ndarray, box: LabelledBox, label: str, margin: float) -> list[Any]:
    """The cut of one box as the served crop step cuts it: by mask extent (``crop: mask``) or by box."""
    if box.structure is not None:
        x0, y0, x1, y1 = box.box
        return crop_masks(pixels, [{"structure": box.structure, "bbox": [x0, y0, x1 - x0, y1 - y0]}], margin)
    return crop_boxes(pixels, [{"label": label, "score": 1.0, "box": list(box.box)}], margin)


def _cut_all(
    found: list[tuple[TableImage, int]],
    manifest: pd.DataFrame,
    writer: ShardWriter,
    labels: _Labels,
    margin: float,
    size: int,
    skipped: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The crop manifest rows and ``crops.parquet`` rows of every box, each crop's pixels added to ``writer``;
    a mask table image whose mask is empty is added to ``skipped``."""
    rows: list[dict[str, Any]] = []
    extra_rows: list[dict[str, Any]] = []
    label, keep = labels.label, labels.keep
    for image, row in found:
        if not (image.boxes or image.mask) or image.path is None:
            continue
        decoded = decode_image(image.path.read_bytes(), name=image.where or image.boxes[0].where)
        height, width = decoded.pixels.shape
        boxes = image.boxes if image.mask is None else mask_boxes(image, int(height), int(width))
        if image.mask is not None and not boxes:
            where = image.where.rsplit(", row ", 1)
            skipped.append({
                "table": Path(where[0]).name, "row": int(where[1]) if len(where) == 2 else None, "boxes": 0,
                "error": "its mask is empty: no extent to crop",
            })  # fmt: skip
            continue
        src = manifest.iloc[row]
        spacing = decoded.meta.get("spacing")
        for index, box in enumerate(boxes):
            _check_inside(box, int(height), int(width))
            target = target_value(box.values[label], box.where, label, labels.task)
            sex = {} if labels.sex_field is None else {
                "sex": sex_value(box.values[labels.sex_field], box.where, labels.sex_field)
            }  # fmt: skip
            cut = _cut(decoded.pixels, box, label, margin)
            crop = resize_crops(cut, size)[0]
            shard, offset = writer.add(np.asarray(crop.pixels))
            left, top, right, bottom = cut[0].box
            row_mm, col_mm = (
                training_spacing((float(spacing[0]), float(spacing[1])), bottom - top, right - left, size)
                if spacing
                else (math.nan, math.nan)
            )
            crop_id = _crop_id(str(src["image_id"]), index, box.box)
            split, official = str(src["split"] or ""), str(src["official_split"] or "")
            rows.append({
                **{c: src[c] for c in MANIFEST_COLUMNS if c in src.index},
                "image_id": crop_id,
                "official_split": split if split in SPLITS and official != EXTRA_SPLIT else official,
                "shard": shard, "offset": offset,
                "spacing_row_mm": row_mm, "spacing_col_mm": col_mm,
                **sex,
                label: target,
            })  # fmt: skip
            extra_rows.append({
                "image_id": crop_id, "source_image_id": str(src["image_id"]),
                "x0": box.box[0], "y0": box.box[1], "x1": box.box[2], "y1": box.box[3],
                "cut_x0": left, "cut_y0": top, "cut_x1": right, "cut_y1": bottom,
                **{k: None if box.values.get(k) is None else str(box.values[k]) for k in keep},
            })  # fmt: skip
    return rows, extra_rows


def build_crops(
    dataset: Path,
    out: Path,
    table: Path,
    label: str,
    *,
    keep: Sequence[str] = (),
    margin: float = DEFAULT_MARGIN,
    size: int = 64,
    box_label: str | None = None,
    masks: Path | None = None,
    structure: str | None = None,
    task: str = "multilabel",
    sex_field: str | None = None,
) -> dict[str, Any]:
    """Write the crop dataset of ``table``'s boxes (label: attribute ``label``) at ``out``; returns its dataset.json.

    ``dataset``: the detection (or segmentation) dataset ingested from the same images (patients and split
    come from it); ``keep``: attributes kept per crop in ``crops.parquet`` (e.g. ``level``); ``margin``,
    ``size``: as the workflow's crop and resize steps. ``masks`` makes ``table`` a per-image table and each
    image's box its ``structure``'s mask extent (a mask table); ``task``: ``multilabel`` (0/1 labels) or
    ``regression`` (numbers); ``sex_field``: the field giving each crop's sex (M/F, or True/False as RSNA's
    ``male``). See the module docstring.
    """
    dataset, out = Path(dataset), Path(out)
    if out.resolve() == dataset.resolve():
        raise ConfigError(f"--out {out} is the source dataset itself; write the crops to their own folder.")
    if not 0 <= margin <= 2:
        raise ConfigError(f"margin must be between 0 and 2 (a fraction of the box's side), got {margin:g}.")
    if task not in CROP_TASKS:
        raise ConfigError(
            f"unknown crop task {task!r}; one of {', '.join(CROP_TASKS)}.{did_you_mean(task, CROP_TASKS)}"
        )
    if masks is None and structure is not None:
        raise ConfigError("structure names a mask to crop by (a mask table: per-image values with masks); give masks.")
    spec = PreprocessSpec(size=size)
    source = Dataset.open(dataset)
    fields = [label, *[k for k in keep if k != label]]
    if sex_field is not None and sex_field not in fields:
        fields.append(sex_field)
    if masks is not None:
        if box_label is not None:
            raise ConfigError("box_label selects COCO box categories; a mask table crops by structure (structure).")
        boxes = read_mask_table(table, masks, fields, structure)
        structure = next((str(im.values["structure"]) for im in boxes.images if "structure" in im.values), structure)
    else:
        boxes = read_box_table(table, fields, box_label)
    found, skipped = table_images(boxes, source)
    if not found:
        raise DataError(
            f"none of the table's {len(boxes.images)} images is in the dataset {dataset} (matched by file sha256); "
            "give the detection dataset ingested from this table's images.",
            boxes.path,
        )
    out.mkdir(parents=True, exist_ok=True)
    # New shards beside the current ones, swapped in once every box is cut: a bad row keeps the old dataset.
    fresh = out / f".{SHARD_DIR}-new"
    writer = ShardWriter(out, size, subdir=fresh.name)
    try:
        labels = _Labels(label, keep, task, sex_field)
        rows, extra_rows = _cut_all(found, source.manifest, writer, labels, margin, size, skipped)
        writer.close()
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if not rows:
        shutil.rmtree(fresh, ignore_errors=True)
        raise DataError(f"the table's images in the dataset hold no box to crop (label field {label!r}).", boxes.path)
    shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
    fresh.rename(out / SHARD_DIR)
    frame = pd.DataFrame(rows)
    split_info = {k: v for k, v in source.info.get("split", {}).items() if k != "held_out_version"}
    info = write_dataset(
        out,
        frame,
        labels=[label],
        task=task,  # type: ignore[arg-type]
        spec=spec,
        source={"format": "crops", "dataset": source.version, "table": boxes.path.name},
        skipped=skipped,
        extra={
            "crops": {
                "file": CROPS_FILE,
                "from_dataset": source.version,
                "label": label,
                "keep": list(keep),
                "margin": margin,
                "size": size,
                "box_label": box_label,
                "masks": None if masks is None else Path(masks).name,
                "structure": structure,
                "task": task,
                "sex_field": sex_field,
                "cut": (
                    "radflow.workflow.glue.crop_masks (the mask's extent, margin, clipped)"
                    if masks is not None
                    else "radflow.workflow.glue.crop_boxes (margin, clipped)"
                )
                + " then resize_crops (pad-to-square, resize)",
                "source_images": len({r["source_image_id"] for r in extra_rows}),
            },
            **({"split": {**split_info, "from_dataset": source.version}} if split_info else {}),
        },
    )
    pd.DataFrame(extra_rows).to_parquet(out / CROPS_FILE, index=False)
    return info
