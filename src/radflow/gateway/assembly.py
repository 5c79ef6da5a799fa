"""Studies assembled from single instances until stable: no new instance for ``stable_after_s``.

A modality sends a study as one C-STORE per image, over one association or several, and nothing
says the study is complete; like Orthanc's StableAge, a study is taken as complete once no new
instance has come for a while — or, so that a study that never goes quiet is not held forever,
once ``max_age_s`` has passed since its first instance. Instances are kept in memory grouped by
study and series (a resent instance replaces the earlier copy) up to ``max_bytes`` in all; the
UIDs key the groups here and go no further.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from radflow.gateway.routing import SeriesInfo

__all__ = ["Assembler", "Series", "Study"]


@dataclass
class Series:
    """One series' instances (Part-10 bytes by SOP Instance UID) and the attributes routing reads."""

    info: SeriesInfo
    instances: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Study:
    """A study being assembled; ``key`` is its hashed id, the only name it has outside this module."""

    key: str
    first_at: float
    last_at: float
    series: dict[str, Series] = field(default_factory=dict)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series.values())


class Assembler:
    """Thread-safe: the node's association threads add, the gateway's loop takes the stable studies."""

    def __init__(
        self,
        stable_after_s: float,
        key: Callable[[str], str],
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stable_after_s = stable_after_s
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.pending_bytes = 0
        self._closed = False
        self._key = key
        self._clock = clock
        self._studies: dict[str, Study] = {}
        self._lock = threading.Lock()

    def add(self, study_uid: str, series_uid: str, sop_uid: str, info: SeriesInfo, data: bytes) -> bool:
        """Add one instance (it restarts its study's stable countdown); False, adding nothing, when full or closed."""
        now = self._clock()
        with self._lock:
            if self._closed:
                return False
            study = self._studies.get(study_uid)
            series_held = study.series.get(series_uid) if study is not None else None
            replaced = len(series_held.instances.get(sop_uid, b"")) if series_held is not None else 0
            grown = self.pending_bytes + len(data) - replaced
            if self.max_bytes is not None and grown > self.max_bytes:
                return False
            self.pending_bytes = grown
            if study is None:
                study = self._studies[study_uid] = Study(self._key(study_uid), now, now)
            study.last_at = now
            series = study.series.setdefault(series_uid, Series(info))
            series.instances[sop_uid] = data
            return True

    def take_stable(self) -> tuple[list[Study], list[Study]]:
        """Remove and return the studies now complete, oldest first: (stable ones, ones past ``max_age_s``)."""
        now = self._clock()
        with self._lock:
            stable = [uid for uid, s in self._studies.items() if now - s.last_at >= self.stable_after_s]
            old = [
                uid
                for uid, s in self._studies.items()
                if uid not in stable and self.max_age_s is not None and now - s.first_at >= self.max_age_s
            ]
            return [self._pop(uid) for uid in stable], [self._pop(uid) for uid in old]

    def take_all(self) -> list[Study]:
        """Close (no more instances are added) and return every study: at shutdown, what was acknowledged is scored."""
        with self._lock:
            self._closed = True
            return [self._pop(uid) for uid in list(self._studies)]

    def _pop(self, study_uid: str) -> Study:
        study = self._studies.pop(study_uid)
        self.pending_bytes -= sum(len(d) for s in study.series.values() for d in s.instances.values())
        return study

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._studies)
