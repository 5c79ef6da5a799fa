"""Run a gateway in this process until SIGTERM or Ctrl-C: what ``radflow gateway`` does.

Models load and the store opens before the DICOM port opens, so a bad model URI or a busy port is
a clear error instead of a node that refuses every association. At a signal the node stops
accepting, the studies already acknowledged are scored, and the prediction log is flushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from radflow.daemon import log_to_stderr, metrics_http, stop_on_signals
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

    log_to_stderr("radflow.gateway", log_level)
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


async def _serve(gateway: Gateway, metrics_port: int | None, on_ready: Callable[[Gateway], None] | None) -> None:
    stop = stop_on_signals()
    await gateway.start()
    try:
        async with metrics_http(metrics_port, gateway.settings.host, gateway.registry):
            if on_ready is not None:
                on_ready(gateway)
            await stop.wait()
    finally:
        await gateway.stop()
