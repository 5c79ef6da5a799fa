"""Champion against challenger on the same online feedback, with the CI of the difference.

A shadow challenger scored the same requests as the champion, so the comparison is paired: both models
are resampled over the same requests (same seed, same ``n``), which makes the interval of the difference
much narrower than the two separate intervals suggest. A canary challenger answered other requests, so
its comparison is unpaired.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from radflow.metrics.metrics import bootstrap_weights, percentile_ci, weighted_auroc
from radflow.monitor.online_metrics import Scores, abs_errors, mean_samples, rounded, scores, task_of
from radflow.store import LabelledPrediction, ModelKey

__all__ = ["COMPARABLE_METRICS", "HIGHER_IS_BETTER", "compare"]

COMPARABLE_METRICS = ("macro_auroc", "mae", "accuracy")
"""Metrics the champion/challenger comparison reports and an auto rule may decide on."""
HIGHER_IS_BETTER = {"macro_auroc": True, "mae": False, "accuracy": True}


def _macro_auroc_samples(sc: Scores, cols: list[int], n_bootstrap: int, seed: int) -> tuple[float, np.ndarray]:
    """Macro AUROC over label columns ``cols`` and its resamples (NaN where a label lost a class)."""
    known = ~np.isnan(sc.y)
    y01 = np.where(known, sc.y, 0.0)
    ones = np.ones((1, len(sc.y)))
    point = float(np.mean([weighted_auroc(y01[:, j], sc.s[:, j], ones * known[:, j])[0] for j in cols]))
    parts = []
    for w in bootstrap_weights(len(sc.y), n_bootstrap, seed) if n_bootstrap > 0 else []:
        parts.append(np.mean([weighted_auroc(y01[:, j], sc.s[:, j], w * known[:, j]) for j in cols], axis=0))
    return point, np.concatenate(parts) if parts else np.empty(0)


def _both_classes(sc: Scores, label: str) -> bool:
    j = sc.labels.index(label)
    y = sc.y[:, j]
    return bool(np.any(y == 1) and np.any(y == 0))


def _difference(
    metric: str, a: float, b: float, sa: np.ndarray, sb: np.ndarray, n: tuple[int, int], ci: float
) -> dict[str, Any]:
    diff_ci = percentile_ci(sb - sa, ci) if sa.size and sb.size else None
    higher = HIGHER_IS_BETTER[metric]
    favours = None
    if diff_ci is not None and diff_ci[0] is not None and diff_ci[1] is not None:
        if diff_ci[0] > 0:
            favours = "challenger" if higher else "champion"
        elif diff_ci[1] < 0:
            favours = "champion" if higher else "challenger"
    return {
        "champion": rounded(a),
        "challenger": rounded(b),
        "difference": rounded(b - a),
        "difference_ci": diff_ci,
        "higher_is_better": higher,
        "favours": favours,
        "n_champion": n[0],
        "n_challenger": n[1],
    }


def _compare_classification(
    a_rows: list[LabelledPrediction],
    b_rows: list[LabelledPrediction],
    paired: bool,
    n_bootstrap: int,
    ci: float,
    seed: int,
) -> dict[str, Any] | None:
    if paired:
        keep = [i for i, r in enumerate(a_rows) if r.labels]
        a_rows, b_rows = [a_rows[i] for i in keep], [b_rows[i] for i in keep]
        # The challenger is judged against the same truth as the champion, request by request.
        sa, sb = scores(a_rows), scores(b_rows, truth_from=a_rows)
    else:
        a_rows, b_rows = [r for r in a_rows if r.labels], [r for r in b_rows if r.labels]
        sa, sb = scores(a_rows), scores(b_rows)
    shared = [
        label for label in sa.labels if label in sb.labels and _both_classes(sa, label) and _both_classes(sb, label)
    ]
    if not shared:
        return None
    a_point, a_boot = _macro_auroc_samples(sa, [sa.labels.index(x) for x in shared], n_bootstrap, seed)
    # Paired: the same seed and n give both models the same resampled requests.
    b_seed = seed if paired else seed + 1
    b_point, b_boot = _macro_auroc_samples(sb, [sb.labels.index(x) for x in shared], n_bootstrap, b_seed)
    out = _difference("macro_auroc", a_point, b_point, a_boot, b_boot, (len(a_rows), len(b_rows)), ci)
    out["labels"] = shared
    return out


def _compare_mean(
    metric: str, a: np.ndarray, b: np.ndarray, paired: bool, n_bootstrap: int, ci: float, seed: int
) -> dict[str, Any] | None:
    if a.size == 0 or b.size == 0:
        return None
    sa = mean_samples(a, n_bootstrap, seed)
    sb = mean_samples(b, n_bootstrap, seed if paired else seed + 1)
    return _difference(metric, float(a.mean()), float(b.mean()), sa, sb, (int(a.size), int(b.size)), ci)


def _latest(rows: list[LabelledPrediction]) -> datetime:
    return max(r.created_at for r in rows)


def compare(
    groups: dict[ModelKey, list[LabelledPrediction]], n_bootstrap: int, ci: float, seed: int
) -> dict[str, Any] | None:
    """The most recent champion against the most recent challenger (shadow: paired; canary: unpaired)."""
    champions = [k for k in groups if k.arm == "champion" and not k.shadow]
    challengers = [k for k in groups if k.arm == "challenger"]
    if not champions or not challengers:
        return None
    ka = max(champions, key=lambda k: _latest(groups[k]))
    kb = max(challengers, key=lambda k: _latest(groups[k]))
    a_rows, b_rows = groups[ka], groups[kb]
    paired = kb.shadow
    if paired:
        by_request = {r.request_id: r for r in b_rows if r.request_id is not None}
        pairs = [(r, by_request[r.request_id]) for r in a_rows if r.request_id in by_request]
        a_rows, b_rows = [a for a, _ in pairs], [b for _, b in pairs]
    task = task_of(a_rows[0].outputs) if a_rows else None
    out: dict[str, Any] = {
        "champion": ka._asdict(),
        "challenger": kb._asdict(),
        "mode": "shadow" if paired else "canary",
        "paired": paired,
        "task": task,
        "n": len(a_rows) if paired else None,
        "metrics": {},
        "reason": None,
    }
    if (ka.model, ka.version) == (kb.model, kb.version):
        # After a promotion the old challenger rows are the new champion's own: nothing to compare.
        out["reason"] = f"the challenger ({kb.model} v{kb.version}) is now the champion"
        return out
    if not a_rows or not b_rows:
        out["reason"] = (
            "no requests scored by both models have feedback yet" if paired else "an arm has no feedback yet"
        )
        return out
    if task_of(b_rows[0].outputs) != task:
        out["reason"] = "champion and challenger solve different tasks; they cannot be compared"
        return out
    metrics: dict[str, Any] = {}
    if task == "classification":
        entry = _compare_classification(a_rows, b_rows, paired, n_bootstrap, ci, seed)
        if entry is not None:
            metrics["macro_auroc"] = entry
    elif task == "regression":
        a_err, b_err = abs_errors(a_rows, a_rows), abs_errors(b_rows, a_rows if paired else b_rows)
        if paired:  # only requests where both models gave a value and the reader one
            ok = ~np.isnan(a_err) & ~np.isnan(b_err)
            a_err, b_err = a_err[ok], b_err[ok]
        a_err, b_err = a_err[~np.isnan(a_err)], b_err[~np.isnan(b_err)]
        entry = _compare_mean("mae", a_err, b_err, paired, n_bootstrap, ci, seed)
        if entry is not None:
            metrics["mae"] = entry
    if not paired:  # a verdict judges the answer a reader saw, so only answered arms have one
        a_v = np.array([float(r.correct) for r in a_rows if r.correct is not None])
        b_v = np.array([float(r.correct) for r in b_rows if r.correct is not None])
        entry = _compare_mean("accuracy", a_v, b_v, False, n_bootstrap, ci, seed)
        if entry is not None:
            metrics["accuracy"] = entry
    out["metrics"] = metrics
    if not metrics:
        out["reason"] = "the feedback so far does not support a comparison (e.g. a single class per label)"
    return out
