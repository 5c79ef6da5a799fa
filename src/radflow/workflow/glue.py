"""The glue between a workflow's models, as plain array functions: crops by box or mask, resizing, and
per-crop results aggregated back to the image.

Crops are cut from the decoded image at its original size (the boxes of a detection answer and the
mask extents of a segmentation answer are in those pixels already), so a crop holds every pixel the
source image had there; each crop then goes through the next model's own preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radflow.data.preprocess import prepare_pixels

__all__ = ["Crop", "aggregate_findings", "aggregate_values", "crop_boxes", "crop_masks", "resize_crops"]


@dataclass
class Crop:
    """One cut of the image: its pixels, where it was cut (``box``, original pixels) and what it was cut for."""

    pixels: np.ndarray
    box: list[int]
    """``[x0, y0, x1, y1]`` of the cut in the original image, margin included (x1, y1 exclusive)."""
    source: dict[str, Any]
    """The box (``label``, ``score``, ``box``) or the structure (``structure``, ``bbox``) it was cut for."""


def _cut(pixels: np.ndarray, x0: float, y0: float, x1: float, y1: float, margin: float) -> tuple[np.ndarray, list[int]]:
    height, width = pixels.shape
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    left, top = max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my)))
    right, bottom = min(width, int(np.ceil(x1 + mx))), min(height, int(np.ceil(y1 + my)))
    # A box thinner than a pixel still gives a one-pixel cut.
    right, bottom = max(right, min(width, left + 1)), max(bottom, min(height, top + 1))
    return pixels[top:bottom, left:right], [left, top, right, bottom]


def crop_boxes(
    pixels: np.ndarray,
    boxes: Sequence[dict[str, Any]],
    margin: float = 0.0,
    labels: Sequence[str] | None = None,
    min_score: float = 0.0,
) -> list[Crop]:
    """One crop per box ``{"label", "score", "box": [x0, y0, x1, y1]}`` (of ``labels``, scoring ``min_score`` or more).

    ``margin`` widens each side by that fraction of the box's width (left, right) or height (top, bottom);
    the cut is clipped to the image.
    """
    crops = []
    for box in boxes:
        if (labels is not None and box["label"] not in labels) or float(box["score"]) < min_score:
            continue
        x0, y0, x1, y1 = (float(v) for v in box["box"])
        cut, where = _cut(pixels, x0, y0, x1, y1, margin)
        crops.append(Crop(cut, where, dict(box)))
    return crops


def crop_masks(
    pixels: np.ndarray, structures: Sequence[dict[str, Any]], margin: float = 0.0, labels: Sequence[str] | None = None
) -> list[Crop]:
    """One crop per structure with a non-empty mask, cut at the mask's extent (COCO ``bbox``) plus ``margin``."""
    crops = []
    for s in structures:
        if s.get("bbox") is None or (labels is not None and s["structure"] not in labels):
            continue
        x, y, w, h = (float(v) for v in s["bbox"])
        cut, where = _cut(pixels, x, y, x + w, y + h, margin)
        crops.append(Crop(cut, where, {"structure": s["structure"], "bbox": list(s["bbox"])}))
    return crops


def resize_crops(crops: Sequence[Crop], size: int) -> list[Crop]:
    """Each crop padded to a square and resampled to ``size`` x ``size`` (the data layer's own resize)."""
    return [Crop(prepare_pixels(np.asarray(c.pixels, np.float32), size), c.box, c.source) for c in crops]


def aggregate_findings(per_crop: Sequence[Sequence[dict[str, Any]]], method: str) -> list[dict[str, Any]]:
    """One finding per label from each crop's findings: the ``max`` or ``mean`` probability, or ``any``.

    ``max`` and ``mean`` compare the aggregated probability with the label's threshold; ``any`` calls a
    label positive when some crop did (its probability is then the highest). A label without a threshold
    (never trained) is never positive.
    """
    if not per_crop:
        return []
    out = []
    for j, first in enumerate(per_crop[0]):
        probs = np.array([float(findings[j]["probability"]) for findings in per_crop])
        threshold = first["threshold"]
        probability = float(probs.mean() if method == "mean" else probs.max())
        if method == "any":
            positive = any(bool(findings[j]["positive"]) for findings in per_crop)
        else:
            positive = threshold is not None and probability >= float(threshold)
        out.append({"label": first["label"], "probability": probability, "positive": positive, "threshold": threshold})
    return out


def aggregate_values(values: Sequence[float], method: str) -> float | None:
    """The ``max`` or ``mean`` of the crops' values (None without crops)."""
    if not values:
        return None
    arr = np.asarray(values, np.float64)
    return float(arr.mean() if method == "mean" else arr.max())
