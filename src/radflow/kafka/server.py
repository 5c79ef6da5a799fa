"""Run a worker in this process until SIGTERM or Ctrl-C: what ``radflow worker`` does.

The models load and the store opens before the worker joins its group, so a bad model URI is a clear
error rather than a member that takes partitions and fails them. At a signal the worker stops taking
messages, finishes those in flight, commits, leaves the group (its partitions move to the others at
once) and the prediction log is flushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from radflow.daemon import log_to_stderr, metrics_http, stop_on_signals
from radflow.errors import ConfigError
from radflow.inference.settings import ServeSettings
from radflow.kafka.settings import KafkaSettings
from radflow.kafka.worker import Deliver, Worker

if TYPE_CHECKING:
    from radflow.inference.routing import LoadedModel

__all__ = ["run_worker"]


def run_worker(
    kafka: KafkaSettings,
    serve: ServeSettings,
    *,
    deliver: Deliver | None = None,
    create_topics: int | None = None,
    metrics_port: int | None = None,
    on_ready: Callable[[Worker], None] | None = None,
    log_level: str = "info",
) -> None:
    """Load the model, join the group and score until a signal (blocking).

    ``create_topics``: create missing topics with this many partitions first. ``metrics_port``: serve
    Prometheus ``/metrics`` (the worker's and its inference service's) on it, on ``serve.host``.
    """
    from radflow.hardware import port_is_free
    from radflow.inference.service import preload

    log_to_stderr("radflow.kafka", log_level)
    if metrics_port and not port_is_free(serve.host, metrics_port):
        raise ConfigError(f"metrics port {metrics_port} on {serve.host} is in use; choose another with --metrics-port.")
    models = preload(serve)
    asyncio.run(_serve(kafka, serve, models, deliver, create_topics, metrics_port, on_ready))


async def _serve(
    kafka: KafkaSettings,
    serve: ServeSettings,
    models: dict[str, LoadedModel],
    deliver: Deliver | None,
    create_topics: int | None,
    metrics_port: int | None,
    on_ready: Callable[[Worker], None] | None,
) -> None:
    from radflow.inference.service import InferenceService
    from radflow.kafka.client import ensure_topics

    stop = stop_on_signals()
    if create_topics:
        await ensure_topics(kafka, partitions=create_topics)
    service = InferenceService(serve, preloaded=models)
    await service.start()
    try:
        worker = Worker(kafka, service, deliver)
        await worker.start()
        async with metrics_http(metrics_port, serve.host, service.metrics.registry):
            if on_ready is not None:
                on_ready(worker)
            await worker.run(stop)
    finally:
        await service.stop()
