"""Online evaluation: readers' feedback joined to the logged predictions, per model version and arm.

Feedback is given on the prediction a reader was shown. A shadow model scored the same request (same
``request_id``) in the background, so its row inherits that request's ground truth — the per-label
``labels`` and the regression ``value``, not the ``correct`` verdict, which judged the other model's
answer. That is what lets champion and challenger be compared on the same traffic, paired.

Metrics come from :mod:`radflow.evaluate.metrics`, so an online AUROC is computed exactly as the
offline test AUROC is; confidence intervals are percentile bootstraps over predictions. A paired
comparison resamples the same requests for both models (same seed, same ``n``), so the interval of
the difference is much narrower than the two separate intervals suggest. :func:`decide` turns a
report into a promote/rollback suggestion under an :class:`AutoRule` (off by default); it is pure,
so the service's periodic task and the tests share it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import and_, func, select

from radflow.errors import ConfigError, did_you_mean
from radflow.evaluate.metrics import (
    binary_at_threshold,
    bootstrap_weights,
    multilabel_metrics,
    percentile_ci,
    regression_metrics,
    weighted_auroc,
)
from radflow.serve.store import FEEDBACK, PREDICTIONS, Store

__all__ = [
    "COMPARABLE_METRICS",
    "AutoRule",
    "GroupKey",
    "Judged",
    "decide",
    "group_metrics",
    "group_rows",
    "labelled_predictions",
    "online_report",
]

COMPARABLE_METRICS = ("macro_auroc", "mae", "accuracy")
"""Metrics the champion/challenger comparison reports and an :class:`AutoRule` may decide on."""
_DEFAULT_METRIC = {"classification": "macro_auroc", "regression": "mae"}
_HIGHER_IS_BETTER = {"macro_auroc": True, "mae": False, "accuracy": True}


class GroupKey(NamedTuple):
    """Which model answered (or shadowed): one row of the report per key."""

    model: str
    version: str
    arm: str
    shadow: bool


@dataclass(frozen=True)
class Judged:
    """One logged prediction with the ground truth that applies to it (its own latest feedback or inherited)."""

    id: str
    request_id: str | None
    created_at: datetime
    key: GroupKey
    alias: str | None
    outputs: dict[str, Any]
    labels: dict[str, Any] | None
    value: float | None
    correct: bool | None
    inherited: bool
    """True when the truth was copied from the answered prediction of the same request (a shadow row)."""


def _num(value: float | np.floating[Any] | None) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# The join


def labelled_predictions(store: Store, window: int | None = None, *, siblings: bool = True) -> list[Judged]:
    """Predictions with feedback (the latest row per prediction wins) and, with ``siblings``, the other
    predictions of the same requests (shadow rows), which inherit the labels and value.

    ``window`` keeps, per model name + version + arm (+ shadow), the most recently *made* predictions
    that have feedback; the shadow rows of a request come along with its answered prediction. Two
    SQL queries, no id lists (those hit SQLite's bound-parameter limit on a busy server).
    """
    if window is not None and window < 1:
        raise ConfigError(f"window must be at least 1 feedback-labelled prediction, got {window}.")
    store.flush()
    p = PREDICTIONS.c
    latest = (
        select(FEEDBACK.c.prediction_id, func.max(FEEDBACK.c.id).label("feedback_id"))
        .group_by(FEEDBACK.c.prediction_id)
        .subquery("latest")
    )
    rank = func.row_number().over(
        partition_by=(p.model_name, p.model_version, p.arm, p.shadow), order_by=(p.created_at.desc(), p.id.desc())
    )
    own = (
        select(
            PREDICTIONS,
            FEEDBACK.c.labels.label("fb_labels"),
            FEEDBACK.c.value.label("fb_value"),
            FEEDBACK.c.correct.label("fb_correct"),
            rank.label("recency"),
        )
        .join(latest, latest.c.prediction_id == p.id)
        .join(FEEDBACK, FEEDBACK.c.id == latest.c.feedback_id)
        .subquery("own")
    )
    kept = select(own)
    if window is not None:
        kept = kept.where(own.c.recency <= window)
    out: dict[str, Judged] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(kept).mappings():
            out[row["id"]] = _judged(row, row["fb_labels"], row["fb_value"], row["fb_correct"], inherited=False)
        if siblings:
            sib = PREDICTIONS.alias("sib")
            query = (
                select(sib, own.c.fb_labels, own.c.fb_value)
                .join(own, and_(sib.c.request_id == own.c.request_id, sib.c.id != own.c.id))
                .where(sib.c.id.not_in(select(latest.c.prediction_id)))
            )
            if window is not None:
                query = query.where(own.c.recency <= window)
            for row in conn.execute(query).mappings():
                out.setdefault(row["id"], _judged(row, row["fb_labels"], row["fb_value"], None, inherited=True))
    return sorted(out.values(), key=lambda j: (j.created_at, j.id))


def _judged(row: Any, labels: Any, value: Any, correct: Any, *, inherited: bool) -> Judged:
    return Judged(
        id=row["id"],
        request_id=row["request_id"],
        created_at=_utc(row["created_at"]),
        key=GroupKey(row["model_name"], row["model_version"], row["arm"], bool(row["shadow"])),
        alias=row["model_alias"],
        outputs=row["outputs"] or {},
        labels=labels or None,
        value=None if value is None else float(value),
        correct=None if correct is None else bool(correct),
        inherited=inherited,
    )


def group_rows(rows: Iterable[Judged]) -> dict[GroupKey, list[Judged]]:
    """Rows by model name, version, arm and shadow flag, keys sorted."""
    groups: dict[GroupKey, list[Judged]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    return dict(sorted(groups.items()))


# ---------------------------------------------------------------------------------------------
# Metrics of one group


def _task(outputs: dict[str, Any]) -> str | None:
    if outputs.get("findings") is not None:
        return "classification"
    if outputs.get("prediction") is not None:
        return "regression"
    return None


def _mean_samples(x: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Bootstrap resamples of the mean of ``x`` (``(n_bootstrap,)``; empty when there are none)."""
    if n_bootstrap <= 0 or x.size == 0:
        return np.empty(0)
    return np.concatenate([w @ x / x.size for w in bootstrap_weights(x.size, n_bootstrap, seed)])


class _Scores(NamedTuple):
    """Classification rows as arrays: truth ``y`` (1/0/NaN), probability ``s`` and decision ``p``, ``(n, L)``."""

    labels: list[str]
    y: np.ndarray
    s: np.ndarray
    p: np.ndarray
    thresholds: dict[str, float | None]


def _scores(rows: Sequence[Judged], truth_from: Sequence[Judged] | None = None) -> _Scores:
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
    return _Scores(labels, y, s, p, thresholds)


def _classification(rows: Sequence[Judged], n_bootstrap: int, ci: float, seed: int) -> dict[str, Any] | None:
    rows = [r for r in rows if r.labels and r.outputs.get("findings")]
    if not rows:
        return None
    sc = _scores(rows)
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
        point = _num(np.mean([per_label[sc.labels[j]][key] for j in cols]))
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


def _verdicts(rows: Sequence[Judged], n_bootstrap: int, ci: float, seed: int) -> dict[str, Any] | None:
    verdicts = np.array([float(r.correct) for r in rows if not r.inherited and r.correct is not None])
    if verdicts.size == 0:
        return None
    return {
        "n": int(verdicts.size),
        "correct": int(verdicts.sum()),
        "accuracy": _num(verdicts.mean()),
        "accuracy_ci": percentile_ci(_mean_samples(verdicts, n_bootstrap, seed), ci),
    }


def _regression_pairs(rows: Sequence[Judged]) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = [], []
    for r in rows:
        value = (r.outputs.get("prediction") or {}).get("value")
        if r.value is not None and value is not None:
            truth.append(r.value)
            pred.append(float(value))
    return np.array(truth, dtype=np.float64), np.array(pred, dtype=np.float64)


def _abs_errors(rows: Sequence[Judged], truth_from: Sequence[Judged]) -> np.ndarray:
    """|predicted - reader's value| per row (truth from the same position of ``truth_from``); NaN where unknown."""
    out = np.full(len(rows), np.nan)
    for i, (row, truth) in enumerate(zip(rows, truth_from, strict=True)):
        value = (row.outputs.get("prediction") or {}).get("value")
        if truth.value is not None and value is not None:
            out[i] = abs(float(value) - truth.value)
    return out


def _regression(rows: Sequence[Judged], n_bootstrap: int, ci: float, seed: int) -> dict[str, Any] | None:
    truth, pred = _regression_pairs(rows)
    if truth.size == 0:
        return None
    out = regression_metrics(truth, pred, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
    return {k: out[k] for k in ("n", "mae", "mae_ci", "rmse", "bias", "by_band")}


def group_metrics(rows: Sequence[Judged], *, n_bootstrap: int = 200, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """One model version's online metrics: ``verdicts`` (whole-prediction correct/incorrect),
    ``classification`` (per-label and macro AUROC, sensitivity, specificity with CIs) and
    ``regression`` (MAE with CI); a section is None when no feedback of its kind applies."""
    return {
        "verdicts": _verdicts(rows, n_bootstrap, ci, seed),
        "classification": _classification(rows, n_bootstrap, ci, seed),
        "regression": _regression(rows, n_bootstrap, ci, seed),
    }


# ---------------------------------------------------------------------------------------------
# Champion vs challenger


def _macro_auroc_samples(sc: _Scores, cols: list[int], n_bootstrap: int, seed: int) -> tuple[float, np.ndarray]:
    """Macro AUROC over label columns ``cols`` and its resamples (NaN where a label lost a class)."""
    known = ~np.isnan(sc.y)
    y01 = np.where(known, sc.y, 0.0)
    ones = np.ones((1, len(sc.y)))
    point = float(np.mean([weighted_auroc(y01[:, j], sc.s[:, j], ones * known[:, j])[0] for j in cols]))
    parts = []
    for w in bootstrap_weights(len(sc.y), n_bootstrap, seed) if n_bootstrap > 0 else []:
        parts.append(np.mean([weighted_auroc(y01[:, j], sc.s[:, j], w * known[:, j]) for j in cols], axis=0))
    return point, np.concatenate(parts) if parts else np.empty(0)


def _both_classes(sc: _Scores, label: str) -> bool:
    j = sc.labels.index(label)
    y = sc.y[:, j]
    return bool(np.any(y == 1) and np.any(y == 0))


def _difference(
    metric: str, a: float, b: float, sa: np.ndarray, sb: np.ndarray, n: tuple[int, int], ci: float
) -> dict[str, Any]:
    diff_ci = percentile_ci(sb - sa, ci) if sa.size and sb.size else None
    higher = _HIGHER_IS_BETTER[metric]
    favours = None
    if diff_ci is not None and diff_ci[0] is not None and diff_ci[1] is not None:
        if diff_ci[0] > 0:
            favours = "challenger" if higher else "champion"
        elif diff_ci[1] < 0:
            favours = "champion" if higher else "challenger"
    return {
        "champion": _num(a),
        "challenger": _num(b),
        "difference": _num(b - a),
        "difference_ci": diff_ci,
        "higher_is_better": higher,
        "favours": favours,
        "n_champion": n[0],
        "n_challenger": n[1],
    }


def _compare_classification(
    a_rows: list[Judged], b_rows: list[Judged], paired: bool, n_bootstrap: int, ci: float, seed: int
) -> dict[str, Any] | None:
    if paired:
        keep = [i for i, r in enumerate(a_rows) if r.labels]
        a_rows, b_rows = [a_rows[i] for i in keep], [b_rows[i] for i in keep]
        # The challenger is judged against the same truth as the champion, request by request.
        sa, sb = _scores(a_rows), _scores(b_rows, truth_from=a_rows)
    else:
        a_rows, b_rows = [r for r in a_rows if r.labels], [r for r in b_rows if r.labels]
        sa, sb = _scores(a_rows), _scores(b_rows)
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
    sa = _mean_samples(a, n_bootstrap, seed)
    sb = _mean_samples(b, n_bootstrap, seed if paired else seed + 1)
    return _difference(metric, float(a.mean()), float(b.mean()), sa, sb, (int(a.size), int(b.size)), ci)


def _latest(rows: list[Judged]) -> datetime:
    return max(r.created_at for r in rows)


def _comparison(groups: dict[GroupKey, list[Judged]], n_bootstrap: int, ci: float, seed: int) -> dict[str, Any] | None:
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
    task = _task(a_rows[0].outputs) if a_rows else None
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
    if _task(b_rows[0].outputs) != task:
        out["reason"] = "champion and challenger solve different tasks; they cannot be compared"
        return out
    metrics: dict[str, Any] = {}
    if task == "classification":
        entry = _compare_classification(a_rows, b_rows, paired, n_bootstrap, ci, seed)
        if entry is not None:
            metrics["macro_auroc"] = entry
    elif task == "regression":
        a_err, b_err = _abs_errors(a_rows, a_rows), _abs_errors(b_rows, a_rows if paired else b_rows)
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


# ---------------------------------------------------------------------------------------------
# The report


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
                "alias": rows[-1].alias,
                "task": _task(rows[-1].outputs),
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
        "comparison": _comparison(groups, n_bootstrap, ci, seed),
    }


# ---------------------------------------------------------------------------------------------
# The automatic rule


@dataclass(frozen=True)
class AutoRule:
    """When online evidence promotes the challenger or stops its canary (off unless ``enabled``)."""

    enabled: bool = False
    """Off by default: promotion is a clinical decision a person normally takes."""
    min_feedback: int = 200
    """Labelled predictions needed per arm (paired requests in shadow mode) before anything is decided."""
    metric: str | None = None
    """One of COMPARABLE_METRICS; None: ``macro_auroc`` for classification, ``mae`` for regression."""
    margin: float = 0.0
    """How far the CI of the gain must clear zero (in the metric's unit) to act."""
    rollback: bool = True
    """Stop a canary whose challenger is clearly worse (a shadow challenger affects no answer)."""

    def __post_init__(self) -> None:
        if self.metric is not None and self.metric not in COMPARABLE_METRICS:
            raise ConfigError(
                f"auto-rule metric {self.metric!r} is not one of {', '.join(COMPARABLE_METRICS)}."
                + did_you_mean(self.metric, COMPARABLE_METRICS)
            )
        if self.min_feedback < 1:
            raise ConfigError(f"auto-rule min_feedback must be at least 1, got {self.min_feedback}.")
        if self.margin < 0:
            raise ConfigError(f"auto-rule margin must be 0 or more, got {self.margin}.")


def decide(report: dict[str, Any], rule: AutoRule, *, challenger_version: str | None = None) -> dict[str, str] | None:
    """``{"action": "promote" | "rollback", "reason"}`` when the report's comparison is significant
    under ``rule``, else None (always None when the rule is disabled).

    Promote when the whole CI of the challenger's gain lies above ``margin``; roll back (stop the
    canary) when it lies below ``-margin`` and the challenger answers real requests.
    ``challenger_version`` (the version the router serves as challenger now) guards against acting
    on an earlier challenger's evidence: a comparison about another version decides nothing.
    """
    if not rule.enabled:
        return None
    comp = report.get("comparison")
    if not comp or comp.get("reason"):
        return None
    if challenger_version is not None and comp["challenger"]["version"] != challenger_version:
        return None
    metric = rule.metric or _DEFAULT_METRIC.get(comp.get("task") or "")
    entry = comp["metrics"].get(metric) if metric else None
    if entry is None or entry["difference_ci"] is None:
        return None
    n = min(entry["n_champion"], entry["n_challenger"])
    if n < rule.min_feedback:
        return None
    lo, hi = entry["difference_ci"]
    gain_lo, gain_hi = (lo, hi) if entry["higher_is_better"] else (-hi, -lo)
    a, b = comp["champion"], comp["challenger"]
    evidence = (
        f"{metric} {entry['challenger']} for challenger {b['model']} v{b['version']} vs {entry['champion']} for "
        f"champion {a['model']} v{a['version']}: difference {entry['difference']:+.4f}, "
        f"{report.get('ci', 0.95):.0%} CI [{lo:+.4f}, {hi:+.4f}] over {n} "
        + ("paired requests" if comp["paired"] else "labelled predictions per arm")
    )
    if gain_lo > rule.margin:
        return {"action": "promote", "reason": f"{evidence}; the challenger is better by more than {rule.margin}."}
    if rule.rollback and comp["mode"] == "canary" and gain_hi < -rule.margin:
        return {"action": "rollback", "reason": f"{evidence}; the canary is worse by more than {rule.margin}."}
    return None
