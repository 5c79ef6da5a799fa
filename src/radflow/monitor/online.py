"""Online evaluation: readers' feedback joined to the logged predictions, per model version and arm.

Feedback is given on the prediction a reader was shown. A shadow model scored the same request (same
``request_id``) in the background, so its row inherits that request's ground truth — the per-label
``labels`` and the regression ``value``, not the ``correct`` verdict, which judged the other model's
answer. That is what lets champion and challenger be compared on the same traffic, paired. The join
(latest feedback wins, shadow rows inherit) is the store's: :func:`radflow.store.labelled_predictions`.

The report is three steps, each a module: the metrics of one model version with bootstrap CIs
(:mod:`radflow.monitor.online_metrics`), champion against challenger with the CI of the difference
(:mod:`radflow.monitor.comparison`), and the automatic promote/rollback rule that reads the report
(:mod:`radflow.monitor.autorule`, off by default).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from radflow.errors import ConfigError
from radflow.monitor.comparison import compare
from radflow.monitor.online_metrics import group_metrics, task_of
from radflow.store import LabelledPrediction, ModelKey, Store, labelled_predictions

__all__ = ["group_rows", "online_report"]


def group_rows(rows: Iterable[LabelledPrediction]) -> dict[ModelKey, list[LabelledPrediction]]:
    """Rows by model name, version, arm and shadow flag, keys sorted."""
    groups: dict[ModelKey, list[LabelledPrediction]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    return dict(sorted(groups.items()))


def online_report(
    store: Store, *, window: int = 1000, n_bootstrap: int = 200, ci: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Online metrics per model name + version + arm over the most recent ``window`` feedback-labelled
    predictions of each, and champion vs challenger with the CI of the difference.

    Returns ``{"window", "n_bootstrap", "ci", "generated_at", "n_feedback", "models": [...],
    "comparison": {...} | None}``; see the module docstring for how shadow rows get their truth.
    """
    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be 0 or more, got {n_bootstrap}.")
    if not 0.0 < ci < 1.0:
        raise ConfigError(f"ci must be between 0 and 1 (e.g. 0.95), got {ci}.")
    groups = group_rows(labelled_predictions(store, window))
    models = []
    for key, rows in groups.items():
        models.append(
            {
                **key._asdict(),
                "alias": rows[-1].model_alias,
                "task": task_of(rows[-1].outputs),
                "n": len(rows),
                "n_inherited": sum(r.inherited for r in rows),
                "first_at": rows[0].created_at.isoformat(),
                "last_at": rows[-1].created_at.isoformat(),
                **group_metrics(rows, n_bootstrap=n_bootstrap, ci=ci, seed=seed),
            }
        )
    return {
        "window": window,
        "n_bootstrap": n_bootstrap,
        "ci": ci,
        "generated_at": datetime.now(UTC).isoformat(),
        "n_feedback": sum(not r.inherited for rows in groups.values() for r in rows),
        "models": models,
        "comparison": compare(groups, n_bootstrap, ci, seed),
    }
