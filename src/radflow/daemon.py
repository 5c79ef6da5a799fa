"""What every long-running door without an HTTP app shares (``radflow gateway``, ``radflow worker``):
its log on stderr at a chosen level, a stop event set by SIGINT/SIGTERM, and Prometheus ``/metrics``
on a port of its own for the time it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from radflow.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["log_to_stderr", "metrics_http", "stop_on_signals"]


def log_to_stderr(logger_name: str, level: str) -> None:
    """Send ``logger_name``'s records to stderr at ``level`` (debug, info, warning, error), once per process."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ConfigError(f"log level {level!r} is not one of debug, info, warning, error.")
    logger = logging.getLogger(logger_name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(number)


def stop_on_signals() -> asyncio.Event:
    """An event the running loop sets at SIGINT or SIGTERM: the door's cue to drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.asynccontextmanager
async def metrics_http(port: int | None, host: str, registry: CollectorRegistry) -> AsyncIterator[None]:
    """Serve ``registry`` as Prometheus ``/metrics`` on ``host:port`` (nothing when ``port`` is None) while inside."""
    from prometheus_client import start_http_server

    http = None
    if port is not None:
        http, _thread = start_http_server(port, addr=host, registry=registry)
    try:
        yield
    finally:
        if http is not None:
            with contextlib.suppress(Exception):
                http.shutdown()
