"""Evaluation metrics of each task as pure array functions: no torch, no MLflow, no files.

The pieces they share live beside them: :mod:`~radflow.metrics.bootstrap` (confidence intervals),
:mod:`~radflow.metrics.thresholds` (operating points), :mod:`~radflow.metrics.calibration` and
:mod:`~radflow.metrics.subgroups`; their public names are importable from here too.

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

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from radflow.metrics.bootstrap import bootstrap_weights, json_float, percentile_ci, weighted_auroc
from radflow.metrics.calibration import expected_calibration_error, reliability_curve
from radflow.metrics.subgroups import assign_bands, band_names, subgroup_metrics
from radflow.metrics.thresholds import (
    ThresholdMethod,
    binary_at_threshold,
    choose_threshold,
    choose_thresholds,
    single_class_reason,
)

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

REGRESSION_AGE_BANDS = [0.0, 60.0, 120.0, 180.0, 240.0]
"""Bone-age bands in months used when the config does not set ``evaluate.age_bands``."""


# ---------------------------------------------------------------------------------------------
# Multi-label


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

    valid = [single_class_reason(y_true[known[:, j], j]) is None for j in range(n_labels)]
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
            "prevalence": json_float(np.mean(y == 1)) if y.size else None,
        }
        reason = single_class_reason(y)
        if reason is None:
            auroc = float(roc_auc_score(y, s))
            auprc = float(average_precision_score(y, s))
            aurocs.append(auroc)
            auprcs.append(auprc)
            entry.update(
                auroc=json_float(auroc),
                auroc_ci=percentile_ci(boot[:, j], ci) if n_bootstrap else None,
                auprc=json_float(auprc),
                reason=None,
            )
        else:
            entry.update(auroc=None, auroc_ci=None, auprc=None, reason=reason)
        if thresholds is not None and label in thresholds and y.size:
            entry["threshold"] = json_float(thresholds[label], 8)
            entry.update(binary_at_threshold(y, s, thresholds[label]))
        else:
            entry["threshold"] = None
        entry["ece"] = expected_calibration_error(y, s, calibration_bins)
        per_label[label] = entry

    # A resample in which any label lost a class is skipped for the macro average too, so every
    # macro resample averages the same labels as the point estimate.
    macro_boot = boot[:, valid].mean(axis=1) if any(valid) and n_bootstrap else np.array([])
    macro = {
        "auroc": json_float(np.mean(aurocs)) if aurocs else None,
        "auroc_ci": percentile_ci(macro_boot, ci) if macro_boot.size else None,
        "auprc": json_float(np.mean(auprcs)) if auprcs else None,
        "n_labels": len(aurocs),
        "labels_skipped": [label for label, ok in zip(labels, valid, strict=True) if not ok],
    }
    for key in ("sensitivity", "specificity", "ppv", "f1"):
        values = [e[key] for e in per_label.values() if e.get(key) is not None]
        macro[key] = json_float(np.mean(values)) if values else None

    pooled_y, pooled_s = y_true[known], y_score[known]
    micro: dict[str, Any] = {"n": int(pooled_y.size)}
    if single_class_reason(pooled_y) is None:
        micro.update(
            auroc=json_float(roc_auc_score(pooled_y, pooled_s)),
            auprc=json_float(average_precision_score(pooled_y, pooled_s)),
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
            "sensitivity": json_float(confusion[c, c] / support) if support else None,
            "ppv": json_float(confusion[c, c] / predicted) if predicted else None,
        }
    return {
        "n": int(truth.size),
        "accuracy": json_float(np.mean(pred == truth)) if truth.size else None,
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
    names = assign_bands(y, bands)
    for name in band_names(bands):
        mask = names == name
        by_band[name] = {
            "n": int(mask.sum()),
            "mae": json_float(np.mean(np.abs(err[mask]))) if mask.any() else None,
            "bias": json_float(np.mean(err[mask])) if mask.any() else None,
        }
    out.update(
        mae=json_float(np.mean(np.abs(err))),
        mae_ci=mae_ci,
        rmse=json_float(np.sqrt(np.mean(err**2))),
        bias=json_float(np.mean(err)),
        target_mean=json_float(np.mean(y)),
        target_std=json_float(np.std(y)),
        by_band=by_band,
    )
    if sex is not None:
        groups = np.asarray(sex, dtype=object)[ok]
        out["by_sex"] = {
            str(g): {"n": int((groups == g).sum()), "mae": json_float(np.mean(np.abs(err[groups == g])))}
            for g in sorted(set(groups.tolist()) - {""})
        }
    return out
