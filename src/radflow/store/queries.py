"""The reads the rest of radflow makes of the store: predictions joined to the feedback that counts.

A prediction may have several feedback rows (a reader corrects their first answer); the latest, the
highest id, is the one that counts. :func:`_latest` is the only place that rule is written: the online
report (:mod:`radflow.monitor`), the feedback export (:mod:`radflow.feedback`) and the web UI's
summary all read through the functions here. Each wait for the prediction writer first (``flush``),
so a prediction logged a moment ago is seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Subquery, and_, false, func, select

from radflow.errors import ConfigError
from radflow.store.schema import FEEDBACK, PREDICTIONS, public, utc
from radflow.store.store import Store

__all__ = ["LabelledPrediction", "ModelKey", "labelled_predictions", "prediction_counts", "recent_predictions"]


class ModelKey(NamedTuple):
    """Which model answered (or shadowed) a prediction."""

    model: str
    version: str
    arm: str
    shadow: bool


@dataclass(frozen=True)
class LabelledPrediction:
    """One logged prediction with the ground truth that applies to it: its own latest feedback, or
    (a shadow row) the truth given on the answered prediction of the same request."""

    id: str
    request_id: str | None
    created_at: datetime
    key: ModelKey
    model_alias: str | None
    input_sha256: str | None
    outputs: dict[str, Any]
    feedback_id: int
    """The feedback row the truth comes from (the answered prediction's, when inherited)."""
    feedback_at: datetime
    n_feedback: int
    """Feedback rows on the prediction the truth comes from (the latest counts, the others were replaced)."""
    labels: dict[str, Any] | None
    value: float | None
    correct: bool | None
    """The reader's verdict on this prediction's answer; never inherited (it judged another model's answer)."""
    inherited: bool
    """True when the truth was copied from the answered prediction of the same request (a shadow row)."""
    study_key: str | None = None
    """The hashed routing key of the request (:func:`radflow.store.store.study_key`), if it had one."""


def _latest(since: datetime | None) -> Subquery:
    """Per prediction with feedback (given at or after ``since``): the id of its latest row and the row count."""
    query = select(
        FEEDBACK.c.prediction_id,
        func.max(FEEDBACK.c.id).label("feedback_id"),
        func.count().label("n_feedback"),
    ).group_by(FEEDBACK.c.prediction_id)
    if since is not None:
        # In UTC: SQLite compares the stored UTC text and ignores a bound value's offset.
        query = query.where(FEEDBACK.c.created_at >= utc(since))
    return query.subquery("latest")


def labelled_predictions(
    store: Store, window: int | None = None, *, since: datetime | None = None, siblings: bool = True
) -> list[LabelledPrediction]:
    """Predictions with feedback and, with ``siblings``, the other predictions of the same requests
    (shadow rows), which inherit the labels and value; oldest prediction first. A workflow's step rows
    (``workflow`` set) share a request too, but never inherit: each step answers its own question.

    ``window`` keeps, per model name + version + arm (+ shadow), the most recently *made* predictions
    that have feedback; the shadow rows of a request come along with its answered prediction.
    ``since`` counts only feedback given at or after that time (the latest such row wins). Two SQL
    queries, no id lists (those hit SQLite's bound-parameter limit on a busy server).
    """
    if window is not None and window < 1:
        raise ConfigError(f"window must be at least 1 feedback-labelled prediction, got {window}.")
    store.flush()
    p = PREDICTIONS.c
    latest = _latest(since)
    rank = func.row_number().over(
        partition_by=(p.model_name, p.model_version, p.arm, p.shadow), order_by=(p.created_at.desc(), p.id.desc())
    )
    own = (
        select(
            PREDICTIONS,
            FEEDBACK.c.id.label("fb_id"),
            FEEDBACK.c.created_at.label("fb_created_at"),
            FEEDBACK.c.labels.label("fb_labels"),
            FEEDBACK.c.value.label("fb_value"),
            FEEDBACK.c.correct.label("fb_correct"),
            latest.c.n_feedback,
            rank.label("recency"),
        )
        .join(latest, latest.c.prediction_id == p.id)
        .join(FEEDBACK, FEEDBACK.c.id == latest.c.feedback_id)
        .subquery("own")
    )
    kept = select(own)
    if window is not None:
        kept = kept.where(own.c.recency <= window)
    out: dict[str, LabelledPrediction] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(kept).mappings():
            out[row["id"]] = _labelled(row, row["fb_correct"], inherited=False)
        if siblings:
            sib = PREDICTIONS.alias("sib")
            query = (
                select(sib, own.c.fb_id, own.c.fb_created_at, own.c.fb_labels, own.c.fb_value, own.c.n_feedback)
                .join(own, and_(sib.c.request_id == own.c.request_id, sib.c.id != own.c.id))
                .where(sib.c.id.not_in(select(latest.c.prediction_id)))
                # A workflow's step rows share their request but each answers its own question: none inherits.
                .where(sib.c.workflow.is_(None))
            )
            if window is not None:
                query = query.where(own.c.recency <= window)
            for row in conn.execute(query).mappings():
                out.setdefault(row["id"], _labelled(row, None, inherited=True))
    return sorted(out.values(), key=lambda r: (r.created_at, r.id))


def _labelled(row: Any, correct: Any, *, inherited: bool) -> LabelledPrediction:
    return LabelledPrediction(
        id=row["id"],
        request_id=row["request_id"],
        created_at=utc(row["created_at"]),
        key=ModelKey(row["model_name"], row["model_version"], row["arm"], bool(row["shadow"])),
        model_alias=row["model_alias"],
        input_sha256=row["input_sha256"] or None,
        outputs=row["outputs"] or {},
        feedback_id=int(row["fb_id"]),
        feedback_at=utc(row["fb_created_at"]),
        n_feedback=int(row["n_feedback"]),
        labels=row["fb_labels"] or None,
        value=None if row["fb_value"] is None else float(row["fb_value"]),
        correct=None if correct is None else bool(correct),
        inherited=inherited,
        study_key=row["study_key"],
    )


def prediction_counts(store: Store, *, include_shadow: bool = False) -> dict[ModelKey, int]:
    """Logged predictions per model name + version + arm (+ shadow), keys sorted; answered ones only by default."""
    store.flush()
    p = PREDICTIONS.c
    key_cols = (p.model_name, p.model_version, p.arm, p.shadow)
    query = select(*key_cols, func.count()).group_by(*key_cols)
    if not include_shadow:
        query = query.where(p.shadow == false())
    with store.engine.connect() as conn:
        counts = {ModelKey(n, v, a, bool(s)): int(c) for n, v, a, s, c in conn.execute(query)}
    return dict(sorted(counts.items()))


def recent_predictions(store: Store, limit: int = 20, *, include_shadow: bool = False) -> list[dict[str, Any]]:
    """The newest predictions (answered ones only by default), newest first, as :meth:`Store.get_prediction`
    gives them plus ``feedback``: the latest feedback row (with ``count``, the rows given) or None."""
    if limit < 1:
        raise ConfigError(f"limit must be at least 1 prediction, got {limit}.")
    store.flush()
    recent = select(PREDICTIONS).order_by(PREDICTIONS.c.created_at.desc(), PREDICTIONS.c.id.desc()).limit(limit)
    if not include_shadow:
        recent = recent.where(PREDICTIONS.c.shadow == false())
    shown = recent.subquery("shown")
    latest = _latest(None)
    given = [c for c in FEEDBACK.columns if c.name != "prediction_id"]
    query = (
        select(shown, latest.c.n_feedback, *(c.label(f"fb_{c.name}") for c in given))
        .outerjoin(latest, latest.c.prediction_id == shown.c.id)
        .outerjoin(FEEDBACK, FEEDBACK.c.id == latest.c.feedback_id)
        .order_by(shown.c.created_at.desc(), shown.c.id.desc())
    )
    out = []
    with store.engine.connect() as conn:
        for row in conn.execute(query).mappings():
            prediction = public({c.name: row[c.name] for c in PREDICTIONS.columns})
            prediction["feedback"] = None
            if row["n_feedback"]:
                feedback = public({c.name: row[f"fb_{c.name}"] for c in given})
                prediction["feedback"] = {**feedback, "count": int(row["n_feedback"])}
            out.append(prediction)
    return out
