"""Operating points: choosing a label's decision threshold on validation data, and binary metrics at it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.metrics import roc_curve

from radflow.metrics.bootstrap import json_float

__all__ = ["ThresholdMethod", "binary_at_threshold", "choose_threshold", "choose_thresholds", "single_class_reason"]

ThresholdMethod = Literal["youden", "sensitivity"]


def single_class_reason(y: np.ndarray) -> str | None:
    if y.size == 0:
        return "no images with a known value for this label"
    positives = int(np.sum(y == 1))
    if positives == 0:
        return f"no positive cases among {y.size} images; AUROC is undefined"
    if positives == y.size:
        return f"no negative cases among {y.size} images; AUROC is undefined"
    return None


def choose_threshold(
    y: np.ndarray, score: np.ndarray, method: ThresholdMethod = "youden", target_sensitivity: float = 0.9
) -> float | None:
    """Operating point on validation data; ``None`` when ``y`` lacks either class.

    ``youden``: the threshold maximising sensitivity + specificity - 1.
    ``sensitivity``: the highest threshold whose sensitivity reaches ``target_sensitivity`` —
    of all thresholds that reach the target, the one with the best specificity.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        return None
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    if method == "youden":
        # Index 0 is sklearn's "nothing positive" point (threshold +inf); a real cut-off is wanted.
        j = tpr[1:] - fpr[1:]
        idx = 1 + int(np.argmax(j))
    elif method == "sensitivity":
        idx = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    else:
        raise ValueError(f"unknown threshold method {method!r}; use 'youden' or 'sensitivity'.")
    return float(thresholds[idx])


def binary_at_threshold(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts, sensitivity, specificity, PPV, NPV and F1 when ``score >= threshold`` is positive."""
    y = np.asarray(y) == 1
    pred = np.asarray(score) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))

    def ratio(a: int, b: int) -> float | None:
        return json_float(a / b) if b else None

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def choose_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    method: ThresholdMethod = "youden",
    target_sensitivity: float = 0.9,
    fallback: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-label operating points chosen on validation data.

    Returns ``{label: {"threshold", "source", "val_sensitivity", "val_specificity", "n"}}``; a label
    whose validation data lacks a class takes its ``fallback`` threshold (e.g. the checkpoint's)
    or 0.5, and ``source`` says which.
    """
    out: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(labels):
        known = ~np.isnan(y_true[:, j])
        y, s = y_true[known, j], y_score[known, j]
        threshold = choose_threshold(y, s, method, target_sensitivity)
        entry: dict[str, Any] = {"n": int(known.sum())}
        if threshold is None:
            if fallback and label in fallback:
                entry.update(threshold=float(fallback[label]), source="checkpoint (val lacks a class)")
            else:
                entry.update(threshold=0.5, source="default 0.5 (val lacks a class)")
        else:
            at = binary_at_threshold(y, s, threshold)
            entry.update(
                threshold=json_float(threshold, 8),
                source=f"val ({method})",
                val_sensitivity=at["sensitivity"],
                val_specificity=at["specificity"],
            )
        out[label] = entry
    return out
