"""Metrics by subgroup (sex, age band, projection) and the value bands they and regression errors use."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from radflow.metrics.bootstrap import json_float
from radflow.metrics.thresholds import single_class_reason

__all__ = ["assign_bands", "band_names", "subgroup_columns", "subgroup_metrics"]


def band_names(edges: Sequence[float]) -> list[str]:
    """``[0, 40, 60]`` -> ``["0-40", "40-60"]`` (each band includes its lower edge, not its upper)."""
    return [f"{_edge(lo)}-{_edge(hi)}" for lo, hi in itertools.pairwise(edges)]


def _edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def assign_bands(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Band name per value; ``""`` for unknown values or values outside the edges."""
    values = np.asarray(values, dtype=np.float64)
    names = np.array(["", *band_names(edges)], dtype=object)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    idx[(idx >= len(edges)) | np.isnan(values)] = 0
    return names[idx]


def subgroup_columns(manifest: pd.DataFrame, age_bands: Sequence[float]) -> dict[str, np.ndarray]:
    """Each image's group per subgrouping the manifest allows: sex, age band (``age_bands``), AP/PA projection."""
    columns: dict[str, np.ndarray] = {}
    if "sex" in manifest:
        columns["sex"] = manifest["sex"].fillna("").astype(str).to_numpy()
    if "age" in manifest and len(age_bands) >= 2:
        columns["age_band"] = assign_bands(manifest["age"].to_numpy(dtype=np.float64), age_bands)
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
    for grouping, values in subgroup_columns(manifest.reset_index(drop=True), age_bands).items():
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
                reason = single_class_reason(y)
                auroc = None if reason else float(roc_auc_score(y, s))
                if auroc is not None:
                    aurocs.append(auroc)
                per_label[label] = {
                    "n": int(y.size),
                    "prevalence": json_float(np.mean(y == 1)) if y.size else None,
                    "auroc": json_float(auroc),
                    "reason": reason,
                }
            groups[value] = {
                "n": int(mask.sum()),
                "macro_auroc": json_float(np.mean(aurocs)) if aurocs else None,
                "per_label": per_label,
            }
        if groups:
            out[grouping] = groups
    return out
