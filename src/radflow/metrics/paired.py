"""Paired comparison of two models' AUROC on the same images: a patient-level bootstrap and DeLong's test.

Two point estimates from separate evaluations cannot say whether a difference is real: on a test
split with a handful of positives for a label, AUROC moves by several hundredths from one
resample to the next. Scoring both models on the *same* images and resampling the difference
cancels what the images share (case difficulty), which is why a paired test is far more
sensitive than comparing two confidence intervals.

* :func:`paired_bootstrap_auroc` resamples *patients* (all images of a drawn patient come
  together), because images of one patient are not independent; each resample scores both models
  on the same drawn images.
* :func:`delong_auroc` is DeLong, DeLong & Clarke-Pearson (1988) in Sun & Xu's (2014) fast form:
  the covariance of the two correlated AUROCs from placement values, then a z test. It treats
  images as independent; prefer the bootstrap when patients have several images.

* :func:`paired_bootstrap_dice` is the same patient-level bootstrap for segmentation: the difference of
  two models' mean per-image Dice of one structure on the same images, each resample drawing patients.

All return the difference ``b - a`` (``b`` the candidate, ``a`` the reference), its interval and
a two-sided p-value, as JSON-ready numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from radflow.metrics.bootstrap import json_float, percentile_ci, weighted_auroc

__all__ = ["bootstrap_difference", "class_counts", "delong_auroc", "paired_bootstrap_auroc", "paired_bootstrap_dice"]


def class_counts(y: np.ndarray) -> tuple[int, int]:
    """(positives, negatives) among the known (non-NaN) values of a binary label."""
    y = np.asarray(y, dtype=np.float64)
    known = y[~np.isnan(y)]
    return int(np.sum(known == 1)), int(np.sum(known == 0))


def _checked(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (y, a, b))
    if not (y.shape == a.shape == b.shape):
        raise ValueError(f"y {y.shape}, scores a {a.shape} and b {b.shape} must have the same length.")
    known = ~np.isnan(y)
    return y[known], a[known], b[known]


def _result(method: str, y: np.ndarray, **extra: Any) -> dict[str, Any]:
    """The answer for a label without a test yet: counts of the known targets ``y``, every estimate ``None``.

    ``extra`` are the method's own keys (DeLong's ``se`` and ``z``), placed before ``resamples``.
    """
    positives, negatives = class_counts(y)
    return {
        "method": method,
        "n": int(y.size),
        "positives": positives,
        "negatives": negatives,
        "auroc_a": None,
        "auroc_b": None,
        "diff": None,
        "ci": None,
        "p_value": None,
        **extra,
        "resamples": 0,
    }


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(np.sum(y == 1)) < y.size


def paired_bootstrap_auroc(
    y: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC of ``score_b`` minus AUROC of ``score_a`` on the same images, with a patient-level bootstrap.

    ``groups`` names each image's patient (default: every image its own patient); resamples draw
    patients with replacement. NaN targets are dropped. Returns ``{"method", "auroc_a", "auroc_b",
    "diff", "ci", "p_value", "n", "positives", "negatives", "resamples"}``; ``p_value`` is the
    two-sided bootstrap p-value of "no difference" (twice the share of resamples on the far side of
    zero), ``None`` where the label lacks a class.
    """
    y_all = np.asarray(y, dtype=np.float64).reshape(-1)
    known = ~np.isnan(y_all)
    y, a, b = _checked(y_all, score_a, score_b)
    out = _result("paired bootstrap over patients", y)
    if not _both_classes(y):
        return out
    ones = np.ones((1, y.size))
    auc_a, auc_b = float(weighted_auroc(y, a, ones)[0]), float(weighted_auroc(y, b, ones)[0])
    out.update(auroc_a=json_float(auc_a), auroc_b=json_float(auc_b), diff=json_float(auc_b - auc_a))
    if n_bootstrap <= 0:
        return out
    diffs = _paired_resamples(
        _group_index(groups, known), n_bootstrap, seed, lambda w: weighted_auroc(y, b, w) - weighted_auroc(y, a, w)
    )
    out.update(bootstrap_difference(diffs, ci))
    return out


def _group_index(groups: np.ndarray | None, kept: np.ndarray) -> np.ndarray:
    """Each kept image's patient as 0..P-1 (``kept``: the boolean mask of images in the test)."""
    if groups is None:
        return np.arange(int(np.sum(kept)))
    g = np.asarray(groups).reshape(-1)
    if g.shape != kept.shape:
        raise ValueError(f"groups {g.shape} must have one entry per image ({kept.shape}).")
    _, index = np.unique(g[kept], return_inverse=True)
    return np.asarray(index)


def _paired_resamples(
    index: np.ndarray, n_bootstrap: int, seed: int, difference: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``n_bootstrap`` values of ``difference(weights)``, weights ``(B, n)`` being patient draw counts per image."""
    n_groups = int(index.max()) + 1
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // max(index.size, 1))
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        # Patient draw counts, spread to that patient's images: the same resample for both models.
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=size).astype(np.float64)
        diffs[done : done + size] = difference(counts[:, index])
        done += size
    return diffs


def paired_bootstrap_dice(
    dice_a: np.ndarray,
    dice_b: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean Dice of model ``b`` minus that of ``a`` for one structure on the same images, resampling patients.

    ``dice_a`` / ``dice_b`` are per-image Dice scores; an image where either is NaN (Dice undefined: the
    structure neither shown nor predicted, or not annotated) is left out of both means. Returns ``{"method",
    "dice_a", "dice_b", "diff", "ci", "p_value", "n", "resamples"}``; ``diff`` etc. ``None`` without an image.
    """
    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (dice_a, dice_b))
    if a.shape != b.shape:
        raise ValueError(f"per-image Dice a {a.shape} and b {b.shape} must have the same length.")
    kept = ~(np.isnan(a) | np.isnan(b))
    a, b = a[kept], b[kept]
    out: dict[str, Any] = {
        "method": "paired bootstrap over patients",
        "n": int(a.size),
        "dice_a": None,
        "dice_b": None,
        "diff": None,
        "ci": None,
        "p_value": None,
        "resamples": 0,
    }
    if not a.size:
        return out
    out.update(dice_a=json_float(a.mean()), dice_b=json_float(b.mean()), diff=json_float(b.mean() - a.mean()))
    if n_bootstrap <= 0:
        return out
    per_image = b - a

    def difference(weights: np.ndarray) -> np.ndarray:
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray((weights @ per_image) / total)  # a resample without images is NaN, dropped

    out.update(bootstrap_difference(_paired_resamples(_group_index(groups, kept), n_bootstrap, seed, difference), ci))
    return out


def bootstrap_difference(diffs: np.ndarray, ci: float) -> dict[str, Any]:
    """``{"resamples", "ci", "p_value"}`` of paired resampled differences ``b - a`` (non-finite ones dropped).

    ``p_value`` is the two-sided bootstrap p-value of "no difference": twice the share of resamples
    on the far side of zero; ``None`` (and no interval) without a finite resample.
    """
    finite = np.asarray(diffs, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    out: dict[str, Any] = {"resamples": int(finite.size), "ci": percentile_ci(finite, ci), "p_value": None}
    if finite.size:
        # (k + 1) / (B + 1): a finite number of resamples never proves a p-value of exactly 0.
        far = min(int(np.sum(finite <= 0)), int(np.sum(finite >= 0)))
        out["p_value"] = json_float(min(1.0, 2.0 * (far + 1) / (finite.size + 1)))
    return out


def delong_auroc(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, ci: float = 0.95) -> dict[str, Any]:
    """DeLong's test of AUROC(``score_b``) - AUROC(``score_a``) on the same images (correlated ROC curves).

    Returns the same keys as :func:`paired_bootstrap_auroc` (``resamples`` 0) plus ``se`` and ``z``;
    the interval is the normal one, ``diff +- z_(ci) * se``.
    """
    from scipy.stats import norm, rankdata

    y, a, b = _checked(y, score_a, score_b)
    out = _result("DeLong", y, se=None, z=None)
    if not _both_classes(y):
        return out
    pos, neg = y == 1, y == 0
    m, n = out["positives"], out["negatives"]
    aucs, v10, v01 = [], [], []
    for s in (a, b):
        # Mid-ranks (ties share their mean rank), as in Sun & Xu's fast DeLong.
        tx, ty, tz = rankdata(s[pos]), rankdata(s[neg]), rankdata(np.r_[s[pos], s[neg]])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # placement of each positive among the negatives
        v01.append(1.0 - (tz[m:] - ty) / m)  # placement of each negative among the positives
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[1] - aucs[0])
    out.update(auroc_a=json_float(aucs[0]), auroc_b=json_float(aucs[1]), diff=json_float(diff))
    if not math.isfinite(var) or var <= 0:
        # Identical rankings (or one class of size one): no variance, so no evidence either way.
        out.update(se=0.0, ci=[json_float(diff), json_float(diff)], p_value=1.0 if diff == 0 else None)
        return out
    se = math.sqrt(var)
    z = diff / se
    half = float(norm.ppf(0.5 + ci / 2.0)) * se
    out.update(
        se=json_float(se),
        z=json_float(z),
        ci=[json_float(diff - half), json_float(diff + half)],
        p_value=json_float(2.0 * float(norm.sf(abs(z)))),
    )
    return out
