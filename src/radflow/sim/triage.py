"""The business metric of triage: how long truly urgent studies wait to be read, worklist order vs arrival order.

The simulator records each answered study: when it arrived, when its answer came, its urgency by
the worklist's rule (:func:`radflow.triage.urgency`) and whether its ground truth holds an urgent
finding. :func:`time_to_read` then replays the same studies through a reading room of ``readers``
radiologists who each take ``read_s`` seconds per study and always pick the next study from those
answered and waiting: by the worklist order (:func:`radflow.triage.order_key`) or first in, first
out. The time to read is from arrival to the end of the read, so a slow model delays both orders.

The reading room is modelled, not real: ``read_s`` defaults to a load of :data:`DEFAULT_LOAD` (the
readers are busy that fraction of the time at the simulated arrival rate), where queues form and
the order matters. Both orders see the same arrivals and answers, so the difference is the order's.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radflow.triage import order_key

__all__ = ["DEFAULT_LOAD", "ReadStudy", "time_to_read", "triage_report", "truly_urgent"]

DEFAULT_LOAD = 0.9
"""Readers' load when no reading time is given: read seconds = load x readers / arrival rate."""


@dataclass(frozen=True)
class ReadStudy:
    """One answered study of a simulation."""

    arrived: float
    """Seconds from the start when it arrived."""
    answered: float
    """Seconds from the start when its answer came (it can be read from then on)."""
    urgency: float
    """The worklist's urgency of its answer (0: no urgent finding)."""
    urgent: bool
    """Its ground truth holds an urgent finding."""


def truly_urgent(truth: Mapping[str, float], thresholds: Mapping[str, float]) -> bool:
    """Whether a case's ground truth holds an urgent finding: a positive label with a threshold (any, when none set)."""
    return any(v >= 0.5 and (not thresholds or k in thresholds) for k, v in truth.items())


def time_to_read(studies: Sequence[ReadStudy], read_s: float, readers: int = 1, worklist: bool = True) -> np.ndarray:
    """Seconds from arrival to the end of its read, per study (input order), readers taking the next by the order."""
    if read_s <= 0 or readers < 1:
        raise ValueError(f"read_s must be > 0 and readers >= 1, got {read_s}, {readers}.")
    pending = sorted(range(len(studies)), key=lambda i: studies[i].answered)
    done = np.zeros(len(studies), dtype=np.float64)
    free = [0.0] * readers  # when each reader is next free (a heap)
    waiting: list[tuple[Any, int]] = []
    nxt = 0
    while nxt < len(pending) or waiting:
        now = heapq.heappop(free)
        if not waiting:  # idle until the next answer
            now = max(now, studies[pending[nxt]].answered)
        while nxt < len(pending) and studies[pending[nxt]].answered <= now:
            i = pending[nxt]
            s = studies[i]
            key = order_key(s.urgency, s.arrived) if worklist else (s.arrived,)
            heapq.heappush(waiting, ((key, i), i))
            nxt += 1
        _, i = heapq.heappop(waiting)
        finish = now + read_s
        done[i] = finish - studies[i].arrived
        heapq.heappush(free, finish)
    return done


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    return {"p50": round(float(np.percentile(values, 50)), 2), "p90": round(float(np.percentile(values, 90)), 2)}


def triage_report(
    studies: Sequence[ReadStudy], rate: float, read_s: float | None = None, readers: int = 1
) -> dict[str, Any]:
    """Time to read (p50/p90 s) of the truly urgent studies in worklist and in arrival (FIFO) order, and of all."""
    if not studies:
        return {"studies": 0, "urgent_studies": 0, "worklist": None, "fifo": None}
    read = read_s if read_s is not None else DEFAULT_LOAD * readers / rate
    urgent = np.array([s.urgent for s in studies], dtype=bool)
    ordered = time_to_read(studies, read, readers, worklist=True)
    fifo = time_to_read(studies, read, readers, worklist=False)
    flagged = np.array([s.urgency > 0 for s in studies], dtype=bool)
    return {
        "studies": len(studies),
        "urgent_studies": int(urgent.sum()),
        "flagged": int(flagged.sum()),
        "flagged_urgent": int((flagged & urgent).sum()),
        "read_s": round(read, 3),
        "readers": readers,
        "worklist": _stats(ordered[urgent]),
        "fifo": _stats(fifo[urgent]),
        "all_worklist": _stats(ordered),
        "all_fifo": _stats(fifo),
    }
