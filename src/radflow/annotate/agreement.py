"""Inter-annotator agreement of tasks with several annotations, and the one rule that resolves them.

Agreement, per kind, over every pair of annotators on the tasks both annotated:

* findings / classes: Cohen's kappa per label (scikit-learn's), the mean over pairs (Light's kappa);
  undefined (None) where a pair saw one class only;
* values: mean absolute difference between two annotators' values;
* masks: Dice per structure (:func:`radflow.metrics.segmentation.image_metrics`, MONAI's definition; two
  empty masks are left out), the mean over pairs and tasks;
* boxes: pairwise F1 of boxes matched one to one at IoU >= 0.5 (:func:`radflow.metrics.detection.reader_agreement`).

Resolution (:data:`RESOLUTION`): a finding takes the majority of the annotators who answered it, and a
tie leaves it unlabelled (it trains nothing); a value is the median; a mask pixel is inside when more
than half the annotators painted it; boxes are fused by :func:`radflow.data.boxes.fuse_boxes` (the
multi-reader rule of ingest) and a fused box is kept when at least half the annotators drew it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

__all__ = [
    "RESOLUTION",
    "box_agreement",
    "label_agreement",
    "mask_agreement",
    "resolve_boxes",
    "resolve_labels",
    "resolve_masks",
    "resolve_value",
    "value_agreement",
]

RESOLUTION = {
    "labels": "majority of the annotators who answered the finding; a tie leaves it unlabelled",
    "value": "median of the annotators' values",
    "masks": "a pixel is inside when more than half the annotators painted it",
    "boxes": "weighted box fusion (IoU >= 0.5); a fused box is kept when at least half the annotators drew it",
}
"""How several annotations of one task become its feedback (reported with every pull)."""

Reading = dict[str, Any]
"""One annotator's answer for one task: ``{reader: labels}`` entries are built from these."""


def label_agreement(tasks: Sequence[dict[str, dict[str, int]]], labels: Sequence[str]) -> dict[str, Any]:
    """Cohen's kappa per label: ``tasks[i]`` maps each annotator of task ``i`` to their ``{label: 0|1}``."""
    from sklearn.metrics import cohen_kappa_score

    readers = sorted({r for task in tasks for r in task})
    out: dict[str, Any] = {}
    for label in labels:
        kappas, pairs = [], 0
        for a, b in combinations(readers, 2):
            both = [(t[a][label], t[b][label]) for t in tasks if label in t.get(a, {}) and label in t.get(b, {})]
            if not both:
                continue
            pairs += 1
            x, y = np.array(both).T
            if len(set(x) | set(y)) < 2:
                continue
            kappas.append(float(cohen_kappa_score(x, y)))
        if pairs:
            out[label] = {"kappa": round(float(np.mean(kappas)), 4) if kappas else None, "pairs": pairs}
    return out


def resolve_labels(readings: Sequence[dict[str, int]]) -> dict[str, int]:
    """Majority per finding among the annotators who answered it; a tie leaves the finding out."""
    out: dict[str, int] = {}
    for label in sorted({k for r in readings for k in r}):
        votes = [r[label] for r in readings if label in r]
        positive = sum(votes)
        if 2 * positive != len(votes):
            out[label] = int(2 * positive > len(votes))
    return out


def value_agreement(tasks: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Mean absolute difference between two annotators' values, over every pair of every task."""
    diffs = [abs(a - b) for values in tasks for a, b in combinations(values, 2)]
    return {"mean_abs_difference": round(float(np.mean(diffs)), 4) if diffs else None, "pairs": len(diffs)}


def resolve_value(values: Sequence[float]) -> float:
    return float(np.median(values))


def mask_agreement(tasks: Sequence[Sequence[np.ndarray]], structures: Sequence[str]) -> dict[str, Any]:
    """Dice per structure: ``tasks[i]`` holds each annotator's masks ``(K, H, W)`` of task ``i``."""
    from radflow.metrics.segmentation import image_metrics

    dice: list[np.ndarray] = []
    for masks in tasks:
        for a, b in combinations(masks, 2):
            dice.append(image_metrics(a[None], b[None]).dice[0])
    if not dice:
        return {}
    table = np.array(dice)
    out: dict[str, Any] = {}
    for k, structure in enumerate(structures):
        column = table[:, k][~np.isnan(table[:, k])]
        out[structure] = {"dice": round(float(column.mean()), 4) if column.size else None, "pairs": int(column.size)}
    return out


def resolve_masks(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Pixels more than half the annotators painted."""
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    return np.asarray(2 * stack.sum(axis=0) > len(masks))


def _box_array(boxes: Sequence[dict[str, Any]], labels: Sequence[str]) -> np.ndarray:
    rows = [[*b["box"], labels.index(b["label"])] for b in boxes]
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def box_agreement(tasks: Sequence[dict[str, list[dict[str, Any]]]], labels: Sequence[str]) -> dict[str, Any]:
    """Pairwise F1 of matched boxes: ``tasks[i]`` maps each annotator of task ``i`` to their boxes."""
    from radflow.metrics.detection import reader_agreement

    several = [t for t in tasks if len(t) > 1]
    if not several:
        return {}
    result = reader_agreement(
        [[_box_array(t[r], labels) for r in sorted(t)] for t in several],
        readers=[sorted(t) for t in several],
        labels=list(labels),
    )
    return {"f1": result["f1"], "mean_pair_f1": result["mean_pair_f1"], "iou": result["iou"], "tasks": len(several)}


def resolve_boxes(readers: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Fused boxes drawn by at least half the annotators (:func:`radflow.data.boxes.fuse_boxes`)."""
    from radflow.data.boxes import SourceBox, fuse_boxes

    boxes = [
        SourceBox(b["label"], float(b["box"][0]), float(b["box"][1]), float(b["box"][2]), float(b["box"][3]), r)
        for r, drawn in readers.items()
        for b in drawn
    ]
    fused = fuse_boxes(boxes, readers=len(readers))
    return [
        {"label": box.label, "box": [box.x0, box.y0, box.x1, box.y1]} for box, share in fused if 2 * share >= 1 - 1e-9
    ]
