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
from radflow.data.synth.spine import SPINE_LEVELS

__all__ = [
    "Crop",
    "aggregate_findings",
    "aggregate_values",
    "crop_boxes",
    "crop_masks",
    "level_names",
    "name_levels",
    "patient_summary",
    "resize_crops",
]

LEVEL_SETS: dict[str, tuple[str, ...]] = {"spine": SPINE_LEVELS}
"""Named level lists a crop step's ``levels`` may give instead of the names (``spine``: T12..L5)."""


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


def level_names(levels: str | Sequence[str]) -> list[str]:
    """The names, top first, of a crop step's ``levels``: a named set (:data:`LEVEL_SETS`) or the names."""
    return list(LEVEL_SETS[levels]) if isinstance(levels, str) else list(levels)


def name_levels(crops: Sequence[Crop], levels: str | Sequence[str], start: str = "bottom") -> list[Crop]:
    """The crops top to bottom, each named by its place: ``source["level"]`` (None beyond the names).

    Order is by the centre height of the box each crop was cut for. ``start`` ``bottom`` gives the lowest
    box the last name and counts up (lumbar levels are counted from the sacrum: L5 is the body above
    it), so a missed body at the top shifts no name below it; ``top`` gives the highest box the first.
    """
    names = level_names(levels)

    def centre(crop: Crop) -> float:
        box = crop.source.get("box") or crop.box
        return (float(box[1]) + float(box[3])) / 2

    ordered = sorted(crops, key=centre)  # stable: boxes at one height keep the detector's order
    n = len(ordered)
    out = []
    for k, crop in enumerate(ordered):
        place = k if start == "top" else len(names) - n + k
        level = names[place] if 0 <= place < len(names) else None
        out.append(Crop(crop.pixels, crop.box, {**crop.source, "level": level}))
    return out


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


def patient_summary(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One patient's result from the answers of several of their images (each the ``answer`` of a workflow
    whose output aggregates findings): per label the highest probability and positive when any image's
    was; per level (crops named by ``levels``) the same over the crops of that level in every image.

    Shape: ``{"images": n, "findings": [{"label", "probability", "positive"}], "levels": {LEVEL: [same]}}``;
    ``probability`` is None for a label no image answered (no crop found).
    """

    def merge(groups: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for findings in groups:
            for f in findings:
                m = merged.setdefault(f["label"], {"label": f["label"], "probability": None, "positive": False})
                if f.get("probability") is not None:
                    p = float(f["probability"])
                    m["probability"] = p if m["probability"] is None else max(m["probability"], p)
                m["positive"] = bool(m["positive"] or f.get("positive"))
        return list(merged.values())

    per_level: dict[str, list[list[dict[str, Any]]]] = {}
    for answer in answers:
        for crop in answer.get("crops", []):
            level = crop.get("level")
            if level is not None:
                per_level.setdefault(str(level), []).append(crop.get("findings") or [])
    return {
        "images": len(answers),
        "findings": merge([a.get("findings") or [] for a in answers]),
        "levels": {level: merge(groups) for level, groups in per_level.items()},
    }
