"""``GET /v1/worklist``: the studies a reader should read next, urgent findings first (:mod:`radflow.triage`).

The urgency thresholds are the workspace's ``kafka.urgent`` (``RADFLOW_KAFKA_URGENT``), the ones the
Kafka worker's urgent topic uses, read once per app; with none set, a finding the model calls
positive is urgent. A reader's role (``view``) is needed, as for every other prediction read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from radflow.serve.common import error_responses, json_answer, service_of

__all__ = ["worklist"]

worklist = APIRouter(prefix="/v1", tags=["v1"])


def _thresholds(request: Request) -> dict[str, float]:
    found: dict[str, float] | None = getattr(request.app.state, "urgent_thresholds", None)
    if found is None:
        from radflow.kafka.settings import KafkaSettings

        found = dict(KafkaSettings(workspace=service_of(request).settings.workspace).urgent)
        request.app.state.urgent_thresholds = found
    return found


@worklist.get(
    "/worklist",
    summary="Studies in reading order: the model's urgent findings first, then by arrival",
    responses=error_responses(422, 503),
)
async def get_worklist(
    request: Request,
    status: Literal["unread", "read", "all"] = Query("unread", description="Read = a reader gave feedback on it."),
    modality: str | None = Query(None, max_length=16, description="Only studies of this DICOM Modality (CR, DX)."),
    since: datetime | None = Query(None, description="Only studies that arrived at or after this time (ISO 8601)."),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> Response:
    """Shape::

    {"total": int, "offset": int, "limit": int,
     "rule": "thresholds" | "positive", "thresholds": {LABEL: float},
     "items": [{"study": str,            # the hashed study key, or "prediction:<id>"
                "arrived": ISO 8601, "modality": str | null,
                "urgency": float,        # highest probability of an urgent finding, 0 when none
                "urgent": [{"label", "probability"}],
                "status": "unread" | "read", "model": "NAME vVERSION",
                "predictions": [id, ...]}]}
    """
    import asyncio

    from radflow.triage import worklist as read_worklist

    service = service_of(request)
    store = service.require_store()
    thresholds = _thresholds(request)
    answer = await asyncio.to_thread(
        read_worklist,
        store,
        thresholds,
        status=status,
        modality=modality,
        since=since,
        limit=limit,
        offset=offset,
    )
    return json_answer(answer)
