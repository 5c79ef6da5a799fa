"""What this machine lends radflow: the one count of CPU cores that training, ingest, synth and serving size by."""

from __future__ import annotations

import os

__all__ = ["available_cores"]


def available_cores() -> int:
    """CPU cores this process may run on: the affinity mask (taskset, container CPU sets), not ``os.cpu_count``.

    ``os.cpu_count`` counts the host's cores; a process pinned to 2 of 64 that starts 64 threads
    or workers spends its time switching between them.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)
