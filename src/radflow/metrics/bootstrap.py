"""Percentile-bootstrap confidence intervals over images, and the JSON-safe numbers every metric returns.

Resamples are multinomial image counts drawn once per call and shared by all labels, so per-label
and macro intervals come from the same resamples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["bootstrap_weights", "json_float", "percentile_ci", "weighted_auroc"]

# Bootstrap weights are generated in chunks of at most this many cells, so a large test split
# (tens of thousands of images x 1000 resamples) never materialises one huge matrix.
_CHUNK_CELLS = 4_000_000


def json_float(value: float | np.floating[Any] | None, digits: int = 6) -> float | None:
    """A JSON-safe float (rounded), ``None`` for missing or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


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
    return [json_float(lo), json_float(hi)]
