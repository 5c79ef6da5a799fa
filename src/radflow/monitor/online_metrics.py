"""Online metrics of one model version from its feedback-labelled predictions, with bootstrap CIs.

The metrics come from :mod:`radflow.metrics.metrics`, so an online AUROC is computed exactly as the
offline test AUROC is; confidence intervals are percentile bootstraps over predictions. The array
helpers here are shared with the champion/challenger comparison (:mod:`radflow.monitor.comparison`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from radflow.metrics.detection import box_iou
from radflow.metrics.metrics import (
    binary_at_threshold,
    bootstrap_weights,
    multilabel_metrics,
    percentile_ci,
    regression_metrics,
)
from radflow.runtime.masks import decode_rle
from radflow.store import LabelledPrediction

__all__ = [
    "Scores",
    "abs_errors",
    "box_arrays",
    "dice_pairs",
    "group_metrics",
    "matched_boxes",
    "mean_samples",
    "rounded",
    "scores",
    "task_of",
]


def rounded(value: float | np.floating[Any] | None) -> float | None:
    """``value`` to 6 decimals for JSON; None for None, NaN or infinity."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)


def task_of(outputs: dict[str, Any]) -> str | None:
    """``classification``, ``regression``, ``segmentation`` or ``detection`` from a logged answer's outputs
    (None: none of them)."""
    if outputs.get("findings") is not None:
        return "classification"
    if outputs.get("structures") is not None:
        return "segmentation"
    if outputs.get("prediction") is not None:
        return "regression"
    if outputs.get("boxes") is not None:
        return "detection"
    return None


def mean_samples(x: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Bootstrap resamples of the mean of ``x`` (``(n_bootstrap,)``; empty when there are none)."""
    if n_bootstrap <= 0 or x.size == 0:
        return np.empty(0)
    return np.concatenate([w @ x / x.size for w in bootstrap_weights(x.size, n_bootstrap, seed)])


class Scores(NamedTuple):
    """Classification rows as arrays: truth ``y`` (1/0/NaN), probability ``s`` and decision ``p``, ``(n, L)``."""

    labels: list[str]
    y: np.ndarray
    s: np.ndarray
    p: np.ndarray
    thresholds: dict[str, float | None]


def scores(rows: Sequence[LabelledPrediction], truth_from: Sequence[LabelledPrediction] | None = None) -> Scores:
    """Arrays of the rows' findings; truth from ``truth_from`` (row by row) or the rows themselves.

    A label counts as known for a row only when the reader answered it and the row has that finding.
    """
    labels: list[str] = []
    for row in rows:
        for finding in row.outputs.get("findings") or []:
            if finding["label"] not in labels:
                labels.append(finding["label"])
    index = {label: j for j, label in enumerate(labels)}
    n, n_labels = len(rows), len(labels)
    y, s, p = np.full((n, n_labels), np.nan), np.full((n, n_labels), np.nan), np.zeros((n, n_labels))
    thresholds: dict[str, float | None] = {}
    for i, row in enumerate(rows):
        truth = (truth_from[i] if truth_from is not None else row).labels or {}
        for finding in row.outputs.get("findings") or []:
            j = index[finding["label"]]
            s[i, j] = float(finding["probability"])
            p[i, j] = float(bool(finding["positive"]))
            threshold = finding.get("threshold")
            thresholds[finding["label"]] = None if threshold is None else float(threshold)
            answer = truth.get(finding["label"])
            if answer is not None:
                y[i, j] = float(bool(answer))
    return Scores(labels, y, s, p, thresholds)


def _classification(
    rows: Sequence[LabelledPrediction], n_bootstrap: int, ci: float, seed: int
) -> dict[str, Any] | None:
    rows = [r for r in rows if r.labels and r.outputs.get("findings")]
    if not rows:
        return None
    sc = scores(rows)
    base = multilabel_metrics(sc.y, sc.s, sc.labels, None, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
    known = ~np.isnan(sc.y)
    y1, y0, p1 = known & (sc.y == 1), known & (sc.y == 0), sc.p == 1
    # Sensitivity and specificity of the model's own decisions (the logged ``positive`` flag: the
    # threshold for multi-label models, the arg-max for multi-class), resampled like the AUROC.
    sens_boot, spec_boot = np.empty((0, len(sc.labels))), np.empty((0, len(sc.labels)))
    if n_bootstrap > 0:
        sens_parts, spec_parts = [], []
        with np.errstate(invalid="ignore", divide="ignore"):
            for w in bootstrap_weights(len(rows), n_bootstrap, seed):
                sens_parts.append((w @ (y1 & p1)) / (w @ y1))
                spec_parts.append((w @ (y0 & ~p1)) / (w @ y0))
        sens_boot, spec_boot = np.concatenate(sens_parts), np.concatenate(spec_parts)
    per_label: dict[str, Any] = {}
    for j, label in enumerate(sc.labels):
        entry = base["per_label"][label]
        at = binary_at_threshold(sc.y[known[:, j], j], sc.p[known[:, j], j], 0.5)
        per_label[label] = {
            "n": entry["n"],
            "positives": entry["positives"],
            "prevalence": entry["prevalence"],
            "auroc": entry["auroc"],
            "auroc_ci": entry["auroc_ci"],
            "reason": entry["reason"],
            "threshold": sc.thresholds.get(label),
            "sensitivity": at["sensitivity"],
            "sensitivity_ci": percentile_ci(sens_boot[:, j], ci) if at["sensitivity"] is not None else None,
            "specificity": at["specificity"],
            "specificity_ci": percentile_ci(spec_boot[:, j], ci) if at["specificity"] is not None else None,
            "confusion": at["confusion"],
        }

    def macro(key: str, boot: np.ndarray) -> tuple[float | None, list[float | None] | None]:
        cols = [j for j, label in enumerate(sc.labels) if per_label[label][key] is not None]
        if not cols:
            return None, None
        point = rounded(np.mean([per_label[sc.labels[j]][key] for j in cols]))
        return point, percentile_ci(boot[:, cols].mean(axis=1), ci) if boot.size else None

    sens, sens_ci = macro("sensitivity", sens_boot)
    spec, spec_ci = macro("specificity", spec_boot)
    return {
        "n": len(rows),
        "labels": sc.labels,
        "per_label": per_label,
        "macro": {
            "auroc": base["macro"]["auroc"],
            "auroc_ci": base["macro"]["auroc_ci"],
            "n_labels": base["macro"]["n_labels"],
            "labels_skipped": base["macro"]["labels_skipped"],
            "sensitivity": sens,
            "sensitivity_ci": sens_ci,
            "specificity": spec,
            "specificity_ci": spec_ci,
        },
        "label_judgements": int(known.sum()),
        "label_agreements": int(np.sum(sc.p[known] == sc.y[known])),
    }


def _verdicts(rows: Sequence[LabelledPrediction], n_bootstrap: int, ci: float, seed: int) -> dict[str, Any] | None:
    verdicts = np.array([float(r.correct) for r in rows if not r.inherited and r.correct is not None])
    if verdicts.size == 0:
        return None
    return {
        "n": int(verdicts.size),
        "correct": int(verdicts.sum()),
        "accuracy": rounded(verdicts.mean()),
        "accuracy_ci": percentile_ci(mean_samples(verdicts, n_bootstrap, seed), ci),
    }


def _regression_pairs(rows: Sequence[LabelledPrediction]) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = [], []
    for r in rows:
        value = (r.outputs.get("prediction") or {}).get("value")
        if r.value is not None and value is not None:
            truth.append(r.value)
            pred.append(float(value))
    return np.array(truth, dtype=np.float64), np.array(pred, dtype=np.float64)


def abs_errors(rows: Sequence[LabelledPrediction], truth_from: Sequence[LabelledPrediction]) -> np.ndarray:
    """|predicted - reader's value| per row (truth from the same position of ``truth_from``); NaN where unknown."""
    out = np.full(len(rows), np.nan)
    for i, (row, truth) in enumerate(zip(rows, truth_from, strict=True)):
        value = (row.outputs.get("prediction") or {}).get("value")
        if truth.value is not None and value is not None:
            out[i] = abs(float(value) - truth.value)
    return out


def _regression(rows: Sequence[LabelledPrediction], n_bootstrap: int, ci: float, seed: int) -> dict[str, Any] | None:
    truth, pred = _regression_pairs(rows)
    if truth.size == 0:
        return None
    out = regression_metrics(truth, pred, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
    return {k: out[k] for k in ("n", "mae", "mae_ci", "rmse", "bias", "by_band")}


_DICE_CACHE_SIZE = 50_000
_dice_cache: OrderedDict[tuple[str, int], dict[str, float]] = OrderedDict()
_dice_lock = threading.Lock()


def _row_dice(row: LabelledPrediction) -> dict[str, float]:
    """Dice per structure of one row (only those with a Dice), cached by prediction and feedback row.

    The dashboard recomputes every feedback's metrics on each poll, and decoding full-size masks is the
    cost; a logged answer never changes and a new correction is a new feedback row, so the pair is a key.
    """
    key = (row.id, row.feedback_id)
    with _dice_lock:
        if key in _dice_cache:
            _dice_cache.move_to_end(key)
            return _dice_cache[key]
    corrected = (row.labels or {}).get("masks") or {}
    out: dict[str, float] = {}
    for answer in row.outputs.get("structures") or []:
        rle = corrected.get(answer["structure"])
        if rle is None:
            continue
        served = decode_rle(answer["rle"], f"prediction {row.id} {answer['structure']}")
        truth = decode_rle(rle, f"feedback {row.feedback_id} {answer['structure']}")
        total = int(served.sum()) + int(truth.sum())
        if total:
            out[answer["structure"]] = 2 * int(np.count_nonzero(served & truth)) / total
    with _dice_lock:
        _dice_cache[key] = out
        while len(_dice_cache) > _DICE_CACHE_SIZE:
            _dice_cache.popitem(last=False)
    return out


def dice_pairs(rows: Sequence[LabelledPrediction]) -> tuple[list[str], np.ndarray]:
    """Structures and Dice ``(n, K)`` of each row's served mask against the reader's corrected one.

    NaN where the reader sent no mask for the structure, or where both masks are empty (no Dice, as
    in validation: an empty structure left empty is not a perfect score).
    """
    structures: list[str] = []
    for row in rows:
        for answer in row.outputs.get("structures") or []:
            if answer["structure"] not in structures:
                structures.append(answer["structure"])
    index = {s: j for j, s in enumerate(structures)}
    dice = np.full((len(rows), len(structures)), np.nan)
    for i, row in enumerate(rows):
        for name, value in _row_dice(row).items():
            dice[i, index[name]] = value
    return structures, dice


def _segmentation(rows: Sequence[LabelledPrediction], n_bootstrap: int, ci: float, seed: int) -> dict[str, Any] | None:
    rows = [r for r in rows if r.outputs.get("structures") and (r.labels or {}).get("masks")]
    if not rows:
        return None
    structures, dice = dice_pairs(rows)
    per_structure: dict[str, Any] = {}
    for j, name in enumerate(structures):
        scored = dice[:, j][~np.isnan(dice[:, j])]
        per_structure[name] = {
            "n": int(scored.size),
            "dice": rounded(scored.mean()) if scored.size else None,
            "dice_ci": percentile_ci(mean_samples(scored, n_bootstrap, seed), ci) if scored.size else None,
        }
    # Per row the mean over its scored structures, so the CI resamples readings, not pixels or structures.
    scored_rows = ~np.isnan(dice).all(axis=1)
    with np.errstate(invalid="ignore"):
        row_means = np.nanmean(dice[scored_rows], axis=1) if scored_rows.any() else np.empty(0)
    means = [e["dice"] for e in per_structure.values() if e["dice"] is not None]
    return {
        "n": len(rows),
        "structures": structures,
        "per_structure": per_structure,
        "mean_dice": rounded(np.mean(means)) if means else None,
        "mean_dice_ci": percentile_ci(mean_samples(row_means, n_bootstrap, seed), ci) if row_means.size else None,
    }


DETECTION_IOU = 0.5
"""IoU at which a served box finds a corrected one (online AP50, sensitivity and false positives)."""


def box_arrays(rows: Sequence[LabelledPrediction]) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Labels (first seen) and per row its served boxes ``(m, 6)`` ``x0, y0, x1, y1, label index, score`` and
    the reader's corrected boxes ``(M, 5)`` (the row's feedback: the latest one), in the input's pixels."""
    labels: list[str] = []
    for row in rows:
        for box in [*(row.outputs.get("boxes") or []), *((row.labels or {}).get("boxes") or [])]:
            if box["label"] not in labels:
                labels.append(box["label"])
    index = {label: k for k, label in enumerate(labels)}
    served, corrected = [], []
    for row in rows:
        served.append(
            np.array(
                [[*b["box"], index[b["label"]], b["score"]] for b in row.outputs.get("boxes") or []], dtype=np.float64
            ).reshape(-1, 6)
        )
        corrected.append(
            np.array(
                [[*b["box"], index[b["label"]]] for b in (row.labels or {}).get("boxes") or []], dtype=np.float64
            ).reshape(-1, 5)
        )
    return labels, served, corrected


def matched_boxes(served: np.ndarray, corrected: np.ndarray, label: int, iou: float = DETECTION_IOU) -> int:
    """Corrected boxes of ``label`` found by a served box of it: served boxes best score first, each taking the
    unmatched corrected box it overlaps most at IoU >= ``iou`` (COCO's greedy matching)."""
    s = served[served[:, 4] == label]
    s = s[np.argsort(-s[:, 5], kind="stable")]
    t = corrected[corrected[:, 4] == label]
    if not len(s) or not len(t):
        return 0
    overlap = box_iou(s, t)
    free = np.ones(len(t), dtype=bool)
    for i in range(len(s)):
        candidates = np.where(free & (overlap[i] >= iou), overlap[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= 0:
            free[j] = False
    return int((~free).sum())


def _detection(rows: Sequence[LabelledPrediction]) -> dict[str, Any] | None:
    from radflow.metrics.detection import average_precision

    rows = [r for r in rows if r.outputs.get("boxes") is not None and isinstance((r.labels or {}).get("boxes"), list)]
    if not rows:
        return None
    labels, served, corrected = box_arrays(rows)
    ap = average_precision(served, corrected, len(labels), [DETECTION_IOU], max_detections=100) if labels else None
    per_label: dict[str, Any] = {}
    n_truths = n_served = n_found = 0
    for k, label in enumerate(labels):
        truths = sum(int((c[:, 4] == k).sum()) for c in corrected)
        given = sum(int((s[:, 4] == k).sum()) for s in served)
        found = sum(matched_boxes(s, c, k) for s, c in zip(served, corrected, strict=True))
        n_truths, n_served, n_found = n_truths + truths, n_served + given, n_found + found
        per_label[label] = {
            "truths": truths,
            "served": given,
            "found": found,
            "ap50": rounded(ap["per_class"][k]["ap50"]) if ap else None,
            "sensitivity": rounded(found / truths) if truths else None,
            "fp_per_image": rounded((given - found) / len(rows)),
        }
    return {
        "n": len(rows),
        "iou": DETECTION_IOU,
        "labels": labels,
        "per_label": per_label,
        "map50": rounded(ap["ap50"]) if ap else None,
        "sensitivity": rounded(n_found / n_truths) if n_truths else None,
        "fp_per_image": rounded((n_served - n_found) / len(rows)),
    }


def group_metrics(
    rows: Sequence[LabelledPrediction], *, n_bootstrap: int = 200, ci: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """One model version's online metrics: ``verdicts`` (whole-prediction correct/incorrect),
    ``classification`` (per-label and macro AUROC, sensitivity, specificity with CIs) and
    ``regression`` (MAE with CI) and ``segmentation`` (Dice per structure of the served mask against the
    reader's corrected one, and ``mean_dice`` over structures, with CIs) and ``detection`` (served boxes
    against the reader's corrected ones, at the served score threshold: per label and over all, AP50 —
    ``map50`` their mean over labels with a corrected box —, sensitivity at IoU 0.5 and false positives per
    image); a section is None when no feedback of its kind applies."""
    return {
        "verdicts": _verdicts(rows, n_bootstrap, ci, seed),
        "classification": _classification(rows, n_bootstrap, ci, seed),
        "regression": _regression(rows, n_bootstrap, ci, seed),
        "segmentation": _segmentation(rows, n_bootstrap, ci, seed),
        "detection": _detection(rows),
    }
