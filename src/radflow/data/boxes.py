"""Bounding boxes inside radflow: ``boxes.parquet`` beside the manifest, on the image's pad-to-square geometry.

A dataset of task ``detection`` keeps one row per box in ``boxes.parquet`` (:data:`BOX_COLUMNS`):
the image's ``image_id`` (the manifest row it belongs to), its ``label`` (one of the dataset's
labels), the ``reader`` who drew it, the corners ``x0, y0, x1, y1`` and a ``score``. Coordinates are
continuous pixel-edge coordinates at training size (``0 <= x0 < x1 <= size``; the pixel ``(r, c)``
covers ``[c, c + 1) x [r, r + 1)``), after the same pad-to-square and resize as the image
(:func:`radflow.data.preprocess.pad_geometry`), so a box drawn on the original image covers exactly
the same anatomy in the stored pixels.

Readers: ``reader == ""`` is the set a detector trains on. Single-reader sources write only that
set (score 1). Multi-reader sources (VinBigData's ``rad_id``) keep every reader's own boxes under
the reader's id and add the fused set under ``""``: :func:`fuse_boxes` (weighted box fusion with
equal weights, see there), whose score is the share of the image's readers that drew the box
(readers who found nothing count: one of three readers marking a nodule gives 1/3).
An image without a box in the training set is a negative image; a label column of the manifest
is 1 when the image's training set holds a box of that label, else 0 (the split stratifies on it).

:func:`to_training` and :func:`to_original` map boxes between the original image and training
size, both ways and exactly (affine maps of the corners: the cap of very long images, the centred
padding and the resize are each a scale or a shift of the pixel edges). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from radflow.data.preprocess import pad_geometry
from radflow.errors import DataError
from radflow.metrics.detection import box_iou

__all__ = [
    "BOX_COLUMNS",
    "BOX_FILE",
    "FUSED_READER",
    "FUSION_IOU",
    "SourceBox",
    "box_iou",
    "check_box",
    "fuse_boxes",
    "to_original",
    "to_training",
]

BOX_FILE = "boxes.parquet"
BOX_COLUMNS = ["image_id", "label", "reader", "x0", "y0", "x1", "y1", "score"]
FUSED_READER = ""
"""``reader`` of the training set: the only set of a single-reader source, the fused set of a multi-reader one."""
FUSION_IOU = 0.5
"""Boxes of one label from different readers overlapping at least this much are one finding (WBF's threshold)."""


@dataclass(frozen=True)
class SourceBox:
    """One box as the source gives it: original image pixels, and where it was written (for error messages)."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    reader: str = FUSED_READER
    row: int | None = None
    """Line (CSV, header = 1) or annotation index (JSON) the box came from."""


def _factors(height: int, width: int, size: int) -> tuple[float, float, float, float]:
    """Per axis (scale x, scale y, shift x, shift y) from original pixel edges to training-size ones."""
    if height < 1 or width < 1:
        raise ValueError(f"box geometry needs a positive image size, got {height} x {width}.")
    g = pad_geometry(height, width)
    zoom = size / g.side
    return g.width / width * zoom, g.height / height * zoom, g.left * zoom, g.top * zoom


def to_training(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Boxes ``(n, 4)`` ``x0, y0, x1, y1`` on a ``height`` x ``width`` image to training-size coordinates (float64)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy, tx, ty = _factors(height, width, size)
    return np.stack([b[:, 0] * sx + tx, b[:, 1] * sy + ty, b[:, 2] * sx + tx, b[:, 3] * sy + ty], axis=1)


def to_original(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """The inverse of :func:`to_training`: training-size boxes back onto the ``height`` x ``width`` original."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy, tx, ty = _factors(height, width, size)
    return np.stack([(b[:, 0] - tx) / sx, (b[:, 1] - ty) / sy, (b[:, 2] - tx) / sx, (b[:, 3] - ty) / sy], axis=1)


def check_box(box: SourceBox, height: int, width: int) -> None:
    """A box must have positive width and height and lie inside its ``height`` x ``width`` image."""
    if not (box.x1 > box.x0 and box.y1 > box.y0):
        raise DataError(
            f"box {box.label!r} has no area (x0={box.x0:g}, y0={box.y0:g}, x1={box.x1:g}, y1={box.y1:g}); "
            "width and height must be positive"
        )
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        raise DataError(
            f"box {box.label!r} (x0={box.x0:g}, y0={box.y0:g}, x1={box.x1:g}, y1={box.y1:g}) lies outside "
            f"its {width} x {height} (width x height) image"
        )


def fuse_boxes(
    boxes: Sequence[SourceBox], iou: float = FUSION_IOU, readers: int | None = None
) -> list[tuple[SourceBox, float]]:
    """One image's boxes from several readers fused into one set: (fused box, share of readers that drew it).

    ``readers``: how many read the image, also those who found nothing (default: those who drew a box).

    Weighted box fusion (Solovyev, Wang & Gabruseva, 2021) with every reader's box weighted equally:
    per label, boxes are taken largest first; each joins the first cluster whose fused box it
    overlaps by at least ``iou`` and that holds no box of its reader yet, else starts a cluster;
    a cluster's box is the mean of its members' corners. Every cluster is kept (a finding one reader
    of three saw stays, with score 1/3), so training sees what any reader marked and the score says how
    sure the readers were.
    """
    n_readers = max(readers or 0, len({b.reader for b in boxes}))
    out: list[tuple[SourceBox, float]] = []
    for label in sorted({b.label for b in boxes}):
        mine = sorted(
            (b for b in boxes if b.label == label), key=lambda b: -(b.x1 - b.x0) * (b.y1 - b.y0)
        )  # stable: equal areas keep the source's order
        clusters: list[list[SourceBox]] = []
        fused: list[np.ndarray] = []
        for box in mine:
            corners = np.array([box.x0, box.y0, box.x1, box.y1])
            for k, members in enumerate(clusters):
                if box.reader not in {m.reader for m in members} and box_iou(corners, fused[k])[0, 0] >= iou:
                    members.append(box)
                    fused[k] = np.mean([[m.x0, m.y0, m.x1, m.y1] for m in members], axis=0)
                    break
            else:
                clusters.append([box])
                fused.append(corners)
        for members, (x0, y0, x1, y1) in zip(clusters, fused, strict=True):
            box = SourceBox(label, float(x0), float(y0), float(x1), float(y1), FUSED_READER, members[0].row)
            out.append((box, len(members) / n_readers))
    return out


def box_rows(
    image_id: str,
    boxes: Sequence[SourceBox],
    height: int,
    width: int,
    size: int,
    fuse: bool,
    readers: int | None = None,
) -> list[dict[str, object]]:
    """The ``boxes.parquet`` rows of one image: its boxes checked, mapped to training size, fused when ``fuse``.

    Raises :class:`DataError` for a box without area or outside the image, its ``row`` the box's row.
    """
    for box in boxes:
        try:
            check_box(box, height, width)
        except DataError as exc:
            raise DataError(str(exc), row=box.row) from None
    kept: list[tuple[SourceBox, float]] = [(b, 1.0) for b in boxes]
    if fuse:
        kept += fuse_boxes([b for b in boxes if b.reader != FUSED_READER], readers=readers)
    if not kept:
        return []
    corners = to_training(np.array([[b.x0, b.y0, b.x1, b.y1] for b, _ in kept]), height, width, size)
    return [
        {
            "image_id": image_id,
            "label": b.label,
            "reader": b.reader,
            "x0": c[0],
            "y0": c[1],
            "x1": c[2],
            "y1": c[3],
            "score": score,
        }
        for (b, score), c in zip(kept, corners, strict=True)
    ]


def box_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """``boxes.parquet``'s table from :func:`box_rows` rows (typed, in :data:`BOX_COLUMNS` order)."""
    frame = pd.DataFrame(rows, columns=BOX_COLUMNS)
    return frame.astype(
        {
            "image_id": str,
            "label": str,
            "reader": str,
            "x0": "float64",
            "y0": "float64",
            "x1": "float64",
            "y1": "float64",
            "score": "float32",
        }
    )
