"""Admission at the door: a bound on the requests being worked on, decoding included, refused with 503 at once.

The batcher's queue bound (``max_queue_size``) only counts requests that have already been read
and decoded; in front of it the decode pool has an unbounded queue, so under a burst of 128
clients every request was accepted and latency grew instead. :class:`Admission` counts a request
from the moment it arrives (before its body is read, when the HTTP door admits it) until it is
answered — body, decode, queue and inference — and refuses the one above ``limit`` with 503 and
``Retry-After`` before any work is done for it.

Admission is re-entrant within one request: the door admits, and the service's own admission in
:meth:`~radflow.inference.InferenceService.predict` (for callers without a door, such as the web
UI or the streaming doors) sees the request is already counted. All counting happens on the event
loop, so a plain integer suffices.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from radflow.inference.errors import OverloadedError

__all__ = ["Admission"]

_ADMITTED: contextvars.ContextVar[bool] = contextvars.ContextVar("radflow_admitted", default=False)


class Admission:
    """At most ``limit`` requests in progress; call :meth:`enter` on the event loop."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the admission limit must be at least 1, got {limit}.")
        self.limit = limit
        self.active = 0
        self.refused = 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Count this request while the block runs; OverloadedError (503, Retry-After) when ``limit`` are in."""
        if _ADMITTED.get():
            yield
            return
        if self.active >= self.limit:
            self.refused += 1
            raise OverloadedError(
                f"the server is at capacity ({self.limit} requests in progress); retry shortly.",
                headers={"Retry-After": "1"},
            )
        self.active += 1
        token = _ADMITTED.set(True)
        try:
            yield
        finally:
            self.active -= 1
            # left in another context than it was entered in (a framework's exit code): nothing to undo
            with contextlib.suppress(ValueError):
                _ADMITTED.reset(token)
