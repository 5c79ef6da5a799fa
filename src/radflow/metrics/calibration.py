"""Calibration of probabilities: expected calibration error and reliability curves."""

from __future__ import annotations

from typing import Any

import numpy as np

from radflow.metrics.bootstrap import json_float

__all__ = ["expected_calibration_error", "reliability_curve"]


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
    return json_float(gap.sum() / counts.sum())


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
                "lower": json_float(b / bins),
                "upper": json_float((b + 1) / bins),
                "n": n,
                "mean_predicted": json_float(sum_p[b] / n) if n else None,
                "observed": json_float(sum_y[b] / n) if n else None,
            }
        )
    return out
