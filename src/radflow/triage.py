"""Triage: which studies a reader should read first, by the model's urgent findings.

One rule orders every reading list radflow makes — ``GET /v1/worklist`` (:mod:`radflow.serve.worklist`)
and the clinic simulator's time-to-read figure (:mod:`radflow.sim.triage`):

* a finding is **urgent** when its probability is at or over its label's urgency threshold
  (``kafka.urgent`` in params.yaml, the thresholds the Kafka worker's urgent topic uses); with no
  thresholds set, a finding the model calls positive (its operating point) is urgent;
* a study's **urgency** is the highest probability of its urgent findings over its answered
  predictions (0 when it has none);
* studies with an urgent finding come first, most urgent first; then the rest; ties and non-urgent
  studies by arrival (first prediction), oldest first (:func:`order_key`).

A study is the store's ``study_key`` (the hashed routing key: the gateway's and worker's study hash,
or a caller's ``X-Routing-Key``); a prediction without one is its own study. It is **read** once a
reader has given feedback on any of its predictions. Nothing here holds an identifier: study keys
are hashes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from radflow.errors import ConfigError

if TYPE_CHECKING:
    from radflow.store import Store

__all__ = ["MAX_SCAN", "WorklistEntry", "order_key", "urgency", "urgent_findings", "worklist"]

MAX_SCAN = 20_000
"""Most predictions one worklist read looks at (newest first); narrow older lists with ``since``."""
Status = Literal["unread", "read", "all"]


def urgent_findings(outputs: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[dict[str, Any]]:
    """``[{label, probability}]`` of an answer's urgent findings (module docstring), most probable first."""
    found = []
    for finding in outputs.get("findings") or []:
        label, probability = finding.get("label"), float(finding.get("probability", 0.0))
        if thresholds:
            urgent = label in thresholds and probability >= thresholds[label]
        else:
            urgent = bool(finding.get("positive"))
        if urgent:
            found.append({"label": str(label), "probability": round(probability, 4)})
    return sorted(found, key=lambda f: -f["probability"])


def urgency(outputs: Mapping[str, Any], thresholds: Mapping[str, float]) -> float:
    """The highest probability among the answer's urgent findings; 0.0 when it has none."""
    found = urgent_findings(outputs, thresholds)
    return float(found[0]["probability"]) if found else 0.0


def order_key(score: float, arrived: Any) -> tuple[int, float, Any]:
    """Sort key of a study in a reading list: urgent first, by urgency (highest first), then by arrival."""
    return (0 if score > 0 else 1, -score, arrived)


@dataclass
class WorklistEntry:
    """One study of the worklist."""

    study: str
    """The study's hashed key (``study_key``), or ``prediction:<id>`` for a prediction without one (``request:<id>``
    for a workflow answer's step rows without one)."""
    arrived: datetime
    """When its first prediction was logged."""
    modality: str | None
    urgency: float = 0.0
    urgent: list[dict[str, Any]] = field(default_factory=list)
    """Urgent findings over the study's predictions (the highest probability per label)."""
    predictions: list[str] = field(default_factory=list)
    """Ids of its answered predictions, oldest first (``GET /v1/predictions/{id}``)."""
    model: str = ""
    """``NAME vVERSION`` of its latest answer."""
    read: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "arrived": self.arrived.isoformat(),
            "modality": self.modality,
            "urgency": round(self.urgency, 4),
            "urgent": self.urgent,
            "status": "read" if self.read else "unread",
            "model": self.model,
            "predictions": self.predictions,
        }


def worklist(
    store: Store,
    thresholds: Mapping[str, float],
    *,
    status: Status = "unread",
    modality: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """``{"total", "offset", "limit", "rule", "thresholds", "items"}``: the store's studies in triage order.

    ``rule`` says what made a finding urgent: ``thresholds`` (the given per-label ones) or
    ``positive`` (none given: the model's operating points); see the module docstring.

    ``status`` keeps unread, read or all studies; ``modality`` those with an input of that DICOM
    Modality (case-insensitive); ``since`` reads only predictions logged at or after it (a study arrives
    with its first such). Paged by
    ``offset``/``limit`` over the ordered list; ``total`` counts every study that matched.
    """
    from sqlalchemy import false, func, select

    from radflow.store.schema import FEEDBACK, PREDICTIONS, utc

    if status not in ("unread", "read", "all"):
        raise ConfigError(f"status must be unread, read or all, got {status!r}.")
    if not 1 <= limit <= 500 or offset < 0:
        raise ConfigError(f"limit must be 1-500 and offset >= 0, got limit {limit}, offset {offset}.")
    store.flush()
    read = select(FEEDBACK.c.prediction_id, func.count().label("n")).group_by(FEEDBACK.c.prediction_id).subquery()
    p = PREDICTIONS.c
    query = (
        select(
            p.id,
            p.created_at,
            p.model_name,
            p.model_version,
            p.outputs,
            p.study_key,
            p.modality,
            p.workflow,
            p.request_id,
            read.c.n,
        )
        .outerjoin(read, read.c.prediction_id == p.id)
        .where(p.shadow == false())
        .order_by(p.created_at.desc(), p.id.desc())
        .limit(MAX_SCAN)
    )
    if since is not None:
        query = query.where(p.created_at >= utc(since))
    with store.engine.connect() as conn:
        rows = list(conn.execute(query).mappings())
    studies: dict[str, WorklistEntry] = {}
    best: dict[str, dict[str, float]] = {}
    for row in reversed(rows):  # oldest first: arrival is the first prediction
        # A workflow answer's step rows are one image however many steps and crops it has.
        alone = f"request:{row['request_id']}" if row["workflow"] and row["request_id"] else f"prediction:{row['id']}"
        key = row["study_key"] or alone
        created = utc(row["created_at"])
        entry = studies.get(key)
        if entry is None:
            entry = studies[key] = WorklistEntry(study=key, arrived=created, modality=row["modality"])
            best[key] = {}
        entry.predictions.append(str(row["id"]))
        entry.model = f"{row['model_name']} v{row['model_version']}"
        entry.modality = entry.modality or row["modality"]
        entry.read = entry.read or bool(row["n"])
        for finding in urgent_findings(row["outputs"] or {}, thresholds):
            labels = best[key]
            labels[finding["label"]] = max(labels.get(finding["label"], 0.0), finding["probability"])
    for key, entry in studies.items():
        entry.urgent = [{"label": k, "probability": v} for k, v in sorted(best[key].items(), key=lambda kv: -kv[1])]
        entry.urgency = entry.urgent[0]["probability"] if entry.urgent else 0.0
    wanted = [
        e
        for e in studies.values()
        if (status == "all" or e.read == (status == "read"))
        and (modality is None or (e.modality or "").upper() == modality.upper())
    ]
    wanted.sort(key=lambda e: order_key(e.urgency, e.arrived))
    return {
        "total": len(wanted),
        "offset": offset,
        "limit": limit,
        "rule": "thresholds" if thresholds else "positive",
        "thresholds": dict(thresholds),
        "items": [e.to_dict() for e in wanted[offset : offset + limit]],
    }
