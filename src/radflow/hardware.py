"""What this machine lends radflow: the one count of CPU cores that training, ingest, synth and serving size by,
and its local ports (every door's listener checks them before it starts)."""

from __future__ import annotations

import os
import socket

__all__ = ["available_cores", "free_port", "port_is_free"]


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def available_cores() -> int:
    """CPU cores this process may run on: the affinity mask (taskset, container CPU sets), not ``os.cpu_count``.

    ``os.cpu_count`` counts the host's cores; a process pinned to 2 of 64 that starts 64 threads
    or workers spends its time switching between them.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)
