"""Run a gateway in this process until SIGTERM or Ctrl-C: what ``radflow gateway`` does.

Models load and the store opens before the DICOM port opens, so a bad model URI or a busy port is
a clear error instead of a node that refuses every association. At a signal the node stops
accepting, the studies already acknowledged are scored, and the prediction log is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable

from radflow.errors import ConfigError
from radflow.gateway.app import Gateway
from radflow.gateway.settings import GatewaySettings
from radflow.inference.settings import ServeSettings

__all__ = ["run_gateway"]


def run_gateway(
    settings: GatewaySettings,
    serve: ServeSettings,
    metrics_port: int | None = None,
    on_ready: Callable[[Gateway], None] | None = None,
    log_level: str = "info",
) -> None:
    """Load the models, listen for DICOM (and serve ``/metrics`` on ``metrics_port``) until a signal (blocking).

    The gateway's own log (studies scored, instances and associations refused: hashed ids, never a UID)
    goes to stderr at ``log_level``; pynetdicom's, which can print data sets, stays at warnings.
    """
    from radflow.hardware import port_is_free
    from radflow.inference.routing import load_model
    from radflow.inference.service import preload

    _log_to_stderr(log_level)
    for port, what in [(settings.port, "DICOM"), (metrics_port, "metrics")]:
        if port and not port_is_free(settings.host, port):
            raise ConfigError(f"{what} port {port} on {settings.host} is in use; choose another with --port.")
    if settings.kafka is not None:  # Kafka mode: the workers load the models, the gateway none
        asyncio.run(_serve(Gateway(settings, serve), metrics_port, on_ready))
        return
    models = preload(serve)
    for rule in settings.rules:
        if rule.model and rule.model not in models:
            models[rule.model] = load_model(rule.model, serve)
    asyncio.run(_serve(Gateway(settings, serve, models), metrics_port, on_ready))


def _log_to_stderr(level: str) -> None:
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ConfigError(f"log level {level!r} is not one of debug, info, warning, error.")
    logger = logging.getLogger("radflow.gateway")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(number)


async def _serve(gateway: Gateway, metrics_port: int | None, on_ready: Callable[[Gateway], None] | None) -> None:
    from prometheus_client import start_http_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    http = None
    try:
        if metrics_port is not None:
            http, _thread = start_http_server(metrics_port, addr=gateway.settings.host, registry=gateway.registry)
        if on_ready is not None:
            on_ready(gateway)
        await stop.wait()
    finally:
        if http is not None:
            with contextlib.suppress(Exception):
                http.shutdown()
        await gateway.stop()
