"""The FastAPI application: assembles the transports (``/v1``, ``/v2``, admin, the web UI) over one service.

Nothing here handles a request: each transport module parses its protocol and calls
:class:`radflow.inference.InferenceService`; :mod:`radflow.serve.common` holds what they share.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from fastapi.responses import Response

from radflow.inference.metrics import CONTENT_TYPE
from radflow.inference.routing import LoadedModel
from radflow.inference.service import InferenceService
from radflow.inference.settings import ServeSettings
from radflow.serve.admin import admin
from radflow.serve.auth import authenticator_for, authorize, document_auth, log_auth_mode
from radflow.serve.common import RequestMiddleware, install_error_handlers, settle_heap
from radflow.serve.ml_backend import ml_backend
from radflow.serve.v1 import v1
from radflow.serve.v2 import v2
from radflow.serve.workflows import workflows
from radflow.serve.worklist import worklist
from radflow.ui import ui_router

if TYPE_CHECKING:
    from radflow.kafka import KafkaHandoff

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: ServeSettings | None = None, preloaded: dict[str, LoadedModel] | None = None) -> FastAPI:
    """The service app; models load in the lifespan (startup) unless ``preloaded``; the log is flushed at shutdown."""
    settings = settings or ServeSettings()
    service = InferenceService(settings, preloaded=preloaded)
    auth = authenticator_for(settings, service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        settle_heap()  # the loaded models and every module out of the collector's full passes
        log_auth_mode(settings, service)
        app.state.kafka = _kafka_handoff(settings)
        try:
            yield
        finally:
            await service.stop()
            if app.state.kafka is not None:
                await app.state.kafka.close()

    app = FastAPI(
        title="radflow",
        summary="Radiograph models over HTTP: /v1 images, /v2 Open Inference Protocol, A/B routing, feedback.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.auth = auth
    install_error_handlers(app)
    # Every router behind the one access check (radflow.serve.auth decides what each route needs).
    guarded = [Depends(authorize)]
    app.include_router(v1, dependencies=guarded)
    app.include_router(worklist, dependencies=guarded)  # GET /v1/worklist (triage order)
    app.include_router(workflows, dependencies=guarded)  # /v1/workflows (radflow.workflow)
    app.include_router(v2, dependencies=guarded)
    app.include_router(admin, dependencies=guarded)
    app.include_router(ui_router(), dependencies=guarded)
    app.include_router(ml_backend, dependencies=guarded)  # Label Studio's ML-backend protocol

    @app.get("/metrics", include_in_schema=False, dependencies=guarded)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    app.state.kafka = None  # set in the lifespan when Kafka is configured (/v1/predict?async=true)
    document_auth(app, auth.enabled)
    app.add_middleware(RequestMiddleware, service=service)  # OPTIONS/Allow, metrics and the audit log in one
    return app


def _kafka_handoff(settings: ServeSettings) -> KafkaHandoff | None:
    """The hand-off to the Kafka workers when a bootstrap is configured (RADFLOW_KAFKA_BOOTSTRAP or ``kafka:``).

    Without one, ``/v1/predict?async=true`` answers 400 saying so; the producer connects on first use.
    """
    from radflow.kafka import KafkaHandoff, KafkaSettings

    kafka = KafkaSettings(workspace=settings.workspace)
    if "bootstrap" not in kafka.model_fields_set:
        return None
    log.info("async mode: /v1/predict?async=true hands images to %s on %s", kafka.images_topic, kafka.bootstrap)
    return KafkaHandoff(kafka)
