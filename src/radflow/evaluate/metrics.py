"""Evaluation metrics as pure array functions: no torch, no MLflow, no files.

Every function takes labels and scores as NumPy arrays and returns JSON-ready dicts (floats or
``None``), so the report, the registry gates and the tests share one implementation.

Conventions:

* Multi-label targets are floats with ``NaN`` = unknown; unknown entries are dropped per label.
* A case is called positive when ``score >= threshold`` (the scikit-learn ROC convention).
* A metric that cannot be computed (e.g. AUROC of a label with only negatives) is ``None`` and the
  label carries a ``reason``; nothing here raises on such data, because a rare finding missing
  from a small test split is normal, not an error.
* Confidence intervals are percentile bootstraps over images. Resamples are drawn once per call as
  multinomial image counts and shared by all labels, so per-label and macro intervals come from
  the same resamples; resamples in which a label has a single class are skipped for that label.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "REGRESSION_AGE_BANDS",
    "ThresholdMethod",
    "band_names",
    "binary_at_threshold",
    "bootstrap_weights",
    "choose_threshold",
    "choose_thresholds",
    "expected_calibration_error",
    "multiclass_metrics",
    "multilabel_metrics",
    "percentile_ci",
    "regression_metrics",
    "reliability_curve",
    "subgroup_metrics",
    "weighted_auroc",
]

ThresholdMethod = Literal["youden", "sensitivity"]
REGRESSION_AGE_BANDS = [0.0, 60.0, 120.0, 180.0, 240.0]
"""Bone-age bands in months used when the config does not set ``evaluate.age_bands``."""

# Bootstrap weights are generated in chunks of at most this many cells, so a large test split
# (tens of thousands of images x 1000 resamples) never materialises one huge matrix.
_CHUNK_CELLS = 4_000_000


def _num(value: float | np.floating[Any] | None, digits: int = 6) -> float | None:
    """A JSON-safe float (rounded), ``None`` for missing or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap_weights(n: int, n_bootstrap: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Multinomial resample counts, ``(chunk, n)`` float arrays, ``n_bootstrap`` rows in all.

    Row ``b`` says how often each image appears in resample ``b`` (a resample of ``n`` images
    drawn with replacement); weighting by counts is the same as indexing, without copies.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        done += size


def weighted_auroc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of binary ``y`` vs ``score`` under each row of ``weights`` ``(B, n)``; NaN where one class.

    The Mann-Whitney statistic with ties counted one half, computed from one sort of the scores:
    for each distinct score, positives there beat the negative weight strictly below it.
    """
    order = np.argsort(score, kind="mergesort")
    s, yy, w = score[order], y[order].astype(np.float64), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * yy, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - yy), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
    auc[(total_pos == 0) | (total_neg == 0)] = np.nan
    return auc


def percentile_ci(samples: np.ndarray, ci: float) -> list[float | None] | None:
    """The ``ci`` percentile interval of the finite ``samples``; ``None`` when there are none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return [_num(lo), _num(hi)]


# ---------------------------------------------------------------------------------------------
# Thresholds and binary metrics


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
        return _num(a / b) if b else None

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
                threshold=_num(threshold, 8),
                source=f"val ({method})",
                val_sensitivity=at["sensitivity"],
                val_specificity=at["specificity"],
            )
        out[label] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Calibration


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    return np.clip((np.asarray(p, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float | None:
    """ECE with ``bins`` equal-width probability bins: sum over bins of share x |observed - predicted|."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.size == 0:
        return None
    idx = _bin_index(p, bins)
    counts = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    # sum_b (n_b / N) * |mean_y_b - mean_p_b| == sum_b |sum_y_b - sum_p_b| / N
    return _num(gap.sum() / counts.sum())


def reliability_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Per equal-width bin: edges, count, mean predicted probability and observed positive rate."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = _bin_index(p, bins)
    counts = np.bincount(idx, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    out = []
    for b in range(bins):
        n = int(counts[b])
        out.append(
            {
                "lower": _num(b / bins),
                "upper": _num((b + 1) / bins),
                "n": n,
                "mean_predicted": _num(sum_p[b] / n) if n else None,
                "observed": _num(sum_y[b] / n) if n else None,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Multi-label


def _single_class_reason(y: np.ndarray) -> str | None:
    if y.size == 0:
        return "no images with a known value for this label"
    positives = int(np.sum(y == 1))
    if positives == 0:
        return f"no positive cases among {y.size} images; AUROC is undefined"
    if positives == y.size:
        return f"no negative cases among {y.size} images; AUROC is undefined"
    return None


def multilabel_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    thresholds: dict[str, float] | None = None,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    calibration_bins: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-label and averaged metrics of a multi-label classifier.

    ``y_true`` ``(n, L)`` holds 1/0/NaN, ``y_score`` ``(n, L)`` probabilities. Binary metrics are
    computed at ``thresholds[label]`` (chosen beforehand on validation data), or skipped when no
    threshold is given. Returns ``{"per_label": {...}, "macro": {...}, "micro": {...},
    "calibration": {...}}``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2 or y_true.shape[1] != len(labels):
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must both be (n, {len(labels)}).")
    n, n_labels = y_true.shape
    known = ~np.isnan(y_true)
    y01 = np.where(known, y_true, 0.0)

    valid = [_single_class_reason(y_true[known[:, j], j]) is None for j in range(n_labels)]
    boot = np.full((n_bootstrap, n_labels), np.nan)
    if n_bootstrap > 0 and n > 0:
        row = 0
        for weights in bootstrap_weights(n, n_bootstrap, seed):
            for j in range(n_labels):
                if valid[j]:
                    # Unknown labels get zero weight: the resample is over images, the label is ignored.
                    boot[row : row + len(weights), j] = weighted_auroc(y01[:, j], y_score[:, j], weights * known[:, j])
            row += len(weights)

    per_label: dict[str, dict[str, Any]] = {}
    aurocs: list[float] = []
    auprcs: list[float] = []
    for j, label in enumerate(labels):
        y, s = y_true[known[:, j], j], y_score[known[:, j], j]
        entry: dict[str, Any] = {
            "n": int(y.size),
            "positives": int(np.sum(y == 1)),
            "prevalence": _num(np.mean(y == 1)) if y.size else None,
        }
        reason = _single_class_reason(y)
        if reason is None:
            auroc = float(roc_auc_score(y, s))
            auprc = float(average_precision_score(y, s))
            aurocs.append(auroc)
            auprcs.append(auprc)
            entry.update(
                auroc=_num(auroc),
                auroc_ci=percentile_ci(boot[:, j], ci) if n_bootstrap else None,
                auprc=_num(auprc),
                reason=None,
            )
        else:
            entry.update(auroc=None, auroc_ci=None, auprc=None, reason=reason)
        if thresholds is not None and label in thresholds and y.size:
            entry["threshold"] = _num(thresholds[label], 8)
            entry.update(binary_at_threshold(y, s, thresholds[label]))
        else:
            entry["threshold"] = None
        entry["ece"] = expected_calibration_error(y, s, calibration_bins)
        per_label[label] = entry

    # A resample in which any label lost a class is skipped for the macro average too, so every
    # macro resample averages the same labels as the point estimate.
    macro_boot = boot[:, valid].mean(axis=1) if any(valid) and n_bootstrap else np.array([])
    macro = {
        "auroc": _num(np.mean(aurocs)) if aurocs else None,
        "auroc_ci": percentile_ci(macro_boot, ci) if macro_boot.size else None,
        "auprc": _num(np.mean(auprcs)) if auprcs else None,
        "n_labels": len(aurocs),
        "labels_skipped": [label for label, ok in zip(labels, valid, strict=True) if not ok],
    }
    for key in ("sensitivity", "specificity", "ppv", "f1"):
        values = [e[key] for e in per_label.values() if e.get(key) is not None]
        macro[key] = _num(np.mean(values)) if values else None

    pooled_y, pooled_s = y_true[known], y_score[known]
    micro: dict[str, Any] = {"n": int(pooled_y.size)}
    if _single_class_reason(pooled_y) is None:
        micro.update(
            auroc=_num(roc_auc_score(pooled_y, pooled_s)), auprc=_num(average_precision_score(pooled_y, pooled_s))
        )
    else:
        micro.update(auroc=None, auprc=None)
    if thresholds is not None and all(label in thresholds for label in labels):
        cut = np.broadcast_to(np.array([thresholds[label] for label in labels]), y_score.shape)[known]
        micro.update(binary_at_threshold(pooled_y, pooled_s - cut, 0.0))
        micro.pop("confusion")

    calibration = {
        "bins": calibration_bins,
        "ece_pooled": expected_calibration_error(pooled_y, pooled_s, calibration_bins),
        "pooled": reliability_curve(pooled_y, pooled_s, calibration_bins),
        "per_label": {
            label: reliability_curve(y_true[known[:, j], j], y_score[known[:, j], j], calibration_bins)
            for j, label in enumerate(labels)
        },
    }
    return {"n": n, "per_label": per_label, "macro": macro, "micro": micro, "calibration": calibration}


# ---------------------------------------------------------------------------------------------
# Subgroups


def band_names(edges: Sequence[float]) -> list[str]:
    """``[0, 40, 60]`` -> ``["0-40", "40-60"]`` (each band includes its lower edge, not its upper)."""
    return [f"{_edge(lo)}-{_edge(hi)}" for lo, hi in itertools.pairwise(edges)]


def _edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _assign_bands(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Band name per value; ``""`` for unknown values or values outside the edges."""
    values = np.asarray(values, dtype=np.float64)
    names = np.array(["", *band_names(edges)], dtype=object)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    idx[(idx >= len(edges)) | np.isnan(values)] = 0
    return names[idx]


def _subgroup_columns(manifest: pd.DataFrame, age_bands: Sequence[float]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    if "sex" in manifest:
        columns["sex"] = manifest["sex"].fillna("").astype(str).to_numpy()
    if "age" in manifest and len(age_bands) >= 2:
        columns["age_band"] = _assign_bands(manifest["age"].to_numpy(dtype=np.float64), age_bands)
    if "projection" in manifest:
        proj = manifest["projection"].fillna("").astype(str).str.upper().to_numpy()
        # Only the frontal projections clinicians compare; lateral views are a different question.
        columns["projection"] = np.where(np.isin(proj, ["AP", "PA"]), proj, "")
    return columns


def subgroup_metrics(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], manifest: pd.DataFrame, age_bands: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """Per-label AUROC, n and prevalence by sex, age band (years) and projection (AP/PA).

    ``manifest`` holds the rows of the evaluated images in the same order as ``y_true``. A
    grouping appears only for values known in the manifest (empty/NaN values are left out).
    Returns ``{grouping: {value: {"n", "macro_auroc", "per_label": {label: {...}}}}}``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for grouping, values in _subgroup_columns(manifest.reset_index(drop=True), age_bands).items():
        groups: dict[str, Any] = {}
        order = band_names(age_bands) if grouping == "age_band" else sorted(set(values) - {""})
        for value in order:
            mask = values == value
            if not mask.any():
                continue
            per_label: dict[str, Any] = {}
            aurocs = []
            for j, label in enumerate(labels):
                known = mask & ~np.isnan(y_true[:, j])
                y, s = y_true[known, j], y_score[known, j]
                reason = _single_class_reason(y)
                auroc = None if reason else float(roc_auc_score(y, s))
                if auroc is not None:
                    aurocs.append(auroc)
                per_label[label] = {
                    "n": int(y.size),
                    "prevalence": _num(np.mean(y == 1)) if y.size else None,
                    "auroc": _num(auroc),
                    "reason": reason,
                }
            groups[value] = {
                "n": int(mask.sum()),
                "macro_auroc": _num(np.mean(aurocs)) if aurocs else None,
                "per_label": per_label,
            }
        if groups:
            out[grouping] = groups
    return out


# ---------------------------------------------------------------------------------------------
# Multi-class


def multiclass_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, one-vs-rest AUROC per class (with CI), macro AUROC and the confusion matrix.

    ``y_true`` is one-hot ``(n, C)`` (rows with NaN or without exactly one 1 are dropped) or
    class indices ``(n,)``; ``y_score`` ``(n, C)`` class probabilities. The predicted class is the
    arg-max. ``confusion[i][j]`` counts images of true class ``i`` predicted as ``j``.
    """
    y_score = np.asarray(y_score, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.float64)
    if y_true.ndim == 2:
        ok = ~np.isnan(y_true).any(axis=1) & (np.nansum(y_true == 1, axis=1) == 1)
        truth = np.argmax(np.nan_to_num(y_true[ok]), axis=1)
    else:
        ok = ~np.isnan(y_true)
        truth = y_true[ok].astype(np.int64)
    scores = y_score[ok]
    n_classes = len(labels)
    onehot = np.eye(n_classes)[truth] if truth.size else np.zeros((0, n_classes))
    ovr = multilabel_metrics(onehot, scores, labels, None, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
    pred = np.argmax(scores, axis=1) if truth.size else np.zeros(0, np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    per_class = {}
    for c, label in enumerate(labels):
        entry = ovr["per_label"][label]
        support = int(confusion[c].sum())
        predicted = int(confusion[:, c].sum())
        per_class[label] = {
            "n": support,
            "prevalence": entry["prevalence"],
            "auroc": entry["auroc"],
            "auroc_ci": entry["auroc_ci"],
            "auprc": entry["auprc"],
            "reason": entry["reason"],
            "sensitivity": _num(confusion[c, c] / support) if support else None,
            "ppv": _num(confusion[c, c] / predicted) if predicted else None,
        }
    return {
        "n": int(truth.size),
        "accuracy": _num(np.mean(pred == truth)) if truth.size else None,
        "per_class": per_class,
        "macro": {k: ovr["macro"][k] for k in ("auroc", "auroc_ci", "auprc", "n_labels", "labels_skipped")},
        "confusion": confusion.tolist(),
        "calibration": ovr["calibration"],
    }


# ---------------------------------------------------------------------------------------------
# Regression


def regression_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    bands: Sequence[float] = REGRESSION_AGE_BANDS,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    sex: np.ndarray | None = None,
) -> dict[str, Any]:
    """MAE (with bootstrap CI), RMSE, bias (mean of predicted - true) and MAE by band of the true value.

    ``bands`` are edges in the target's unit (months for bone age); ``sex`` (``"M"``/``"F"``/``""``
    per image), when given, adds MAE by sex. Images with a NaN target are dropped.
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    ok = ~np.isnan(y_true)
    y, p = y_true[ok], y_pred[ok]
    err = p - y
    n = int(y.size)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        out.update(mae=None, mae_ci=None, rmse=None, bias=None, by_band={}, reason="no images with a known target")
        return out
    mae_ci = None
    if n_bootstrap > 0:
        samples = np.concatenate([w @ np.abs(err) / n for w in bootstrap_weights(n, n_bootstrap, seed)])
        mae_ci = percentile_ci(samples, ci)
    by_band: dict[str, Any] = {}
    names = _assign_bands(y, bands)
    for name in band_names(bands):
        mask = names == name
        by_band[name] = {
            "n": int(mask.sum()),
            "mae": _num(np.mean(np.abs(err[mask]))) if mask.any() else None,
            "bias": _num(np.mean(err[mask])) if mask.any() else None,
        }
    out.update(
        mae=_num(np.mean(np.abs(err))),
        mae_ci=mae_ci,
        rmse=_num(np.sqrt(np.mean(err**2))),
        bias=_num(np.mean(err)),
        target_mean=_num(np.mean(y)),
        target_std=_num(np.std(y)),
        by_band=by_band,
    )
    if sex is not None:
        groups = np.asarray(sex, dtype=object)[ok]
        out["by_sex"] = {
            str(g): {"n": int((groups == g).sum()), "mae": _num(np.mean(np.abs(err[groups == g])))}
            for g in sorted(set(groups.tolist()) - {""})
        }
    return out
