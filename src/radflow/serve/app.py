"""The FastAPI application: ``/v1`` images, ``/v2`` Open Inference Protocol, ``/metrics``, admin.

Every error goes through one handler: :class:`radflow.errors.RadflowError` (client mistakes,
overload, timeouts) becomes ``{"error": msg}`` with its status; anything else is logged and
answered with a generic 500. Request bodies are read with a size limit before anything else.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from radflow.errors import RadflowError
from radflow.runtime import InvalidInputError
from radflow.serve.errors import AdminError, PayloadTooLargeError, ServiceError, UnsupportedMediaError
from radflow.serve.metrics import CONTENT_TYPE, ServiceMetrics
from radflow.serve.routing import LoadedModel
from radflow.serve.service import InferenceService
from radflow.serve.settings import ServeSettings

__all__ = ["create_app", "read_body"]

log = logging.getLogger(__name__)
_RAW_EXTRA = {"application/octet-stream", ""}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(f"invalid Content-Length header {declared!r}.")
        if int(declared) > limit:
            raise PayloadTooLargeError(f"the body is {int(declared):,} bytes, above the limit of {limit:,}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the body is above the limit of {limit:,} bytes.")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse what was already read
    return body


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def _label(request: Request, arm: dict[str, Any]) -> None:
    """Model labels of the answer, picked up by the metrics middleware."""
    request.state.model = arm


class _Metrics:
    """ASGI middleware: per-endpoint request counts and latency, in-flight gauge (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            model = state.get("model") or {}
            labels = (endpoint, model.get("name", ""), model.get("version", ""), model.get("arm", ""))
            self.metrics.requests.labels(*labels, str(status[0])).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
            if status[0] in (503, 504):
                self.metrics.rejected.labels("overload" if status[0] == 503 else "timeout").inc()


def _error(status: int, msg: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RadflowError)
    async def _radflow(_request: Request, exc: RadflowError) -> JSONResponse:
        return _error(exc.status_code, str(exc), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return _error(500, "internal server error; the incident was logged.")


# -- /v1 --------------------------------------------------------------------------------------

v1 = APIRouter(prefix="/v1", tags=["v1"])


class FeedbackIn(BaseModel):
    """Ground truth or a verdict for one prediction."""

    prediction_id: str = Field(min_length=1, max_length=64)
    labels: dict[str, Literal[0, 1]] | None = None
    """Per-label ground truth, 0 or 1 (classification models)."""
    value: float | None = None
    """The true value in the model's unit (regression models)."""
    correct: bool | None = None
    """Whether the reader agrees with the prediction as a whole."""
    reader: str | None = Field(None, max_length=200)
    comment: str | None = Field(None, max_length=5000)


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY["schema"]}, "required": ["file"]}
            },
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "application/dicom": _BINARY,
        },
    }
}


@v1.post(
    "/predict",
    summary="Score one radiograph (PNG, JPEG or DICOM) as multipart field `file` or raw body",
    description="Send `X-Routing-Key` to stick a caller (e.g. a hashed study id) to one A/B arm.",
    openapi_extra=_UPLOAD,
)
async def predict(
    request: Request,
    sex: Literal["M", "F"] | None = Query(None, description="Sex for regression models (else the DICOM header)."),
) -> JSONResponse:
    service = _service(request)
    s = service.settings
    body = await read_body(request, s.max_body_bytes)
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInputError("a multipart upload needs the image in a file field named 'file'.")
        data = await upload.read()
    elif declared in s.allowed_content_types or declared in _RAW_EXTRA:
        data = body
    else:
        raise UnsupportedMediaError(
            f"Content-Type {declared!r} is not accepted; send {', '.join(s.allowed_content_types)} "
            "or multipart/form-data with a 'file' field."
        )
    answer = await service.predict(data, request.headers.get("x-routing-key"), sex)
    _label(request, {**answer["model"], "arm": answer["arm"]})
    return JSONResponse(answer)


@v1.get("/predictions/{prediction_id}", summary="A logged prediction")
async def get_prediction(request: Request, prediction_id: str) -> JSONResponse:
    import asyncio

    store = _service(request).require_store()
    return JSONResponse(await asyncio.to_thread(store.get_prediction, prediction_id))


@v1.get("/predictions/{prediction_id}/heatmap.png", summary="Class activation map of one label over the input")
async def heatmap(request: Request, prediction_id: str, label: str = Query(..., min_length=1)) -> Response:
    png = await _service(request).heatmap(prediction_id, label)
    return Response(png, media_type="image/png")


@v1.post("/feedback", status_code=201, summary="Ground truth or verdict for a prediction (durable before 201)")
async def feedback(request: Request, body: FeedbackIn) -> JSONResponse:
    import asyncio

    store = _service(request).require_store()
    if body.labels is None and body.value is None and body.correct is None:
        raise InvalidInputError("feedback needs at least one of 'labels', 'value' or 'correct'.")
    record = await asyncio.to_thread(store.get_prediction, body.prediction_id)
    outputs = record.get("outputs") or {}
    if body.labels is not None:
        known = [f["label"] for f in outputs.get("findings") or []]
        if not known:
            raise InvalidInputError("this prediction is a regression value; send 'value', not 'labels'.")
        unknown = sorted(set(body.labels) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown labels {unknown}; the model predicts {', '.join(known)}.")
    if body.value is not None and "prediction" not in outputs:
        raise InvalidInputError("this prediction has findings; send per-label 'labels', not 'value'.")
    saved = await asyncio.to_thread(
        store.add_feedback,
        body.prediction_id,
        dict(body.labels) if body.labels else None,
        body.value,
        body.correct,
        body.reader,
        body.comment,
    )
    return JSONResponse(saved, status_code=201)


@v1.get("/monitoring", summary="Drift against each model version's reference, online evaluation, recent alerts")
async def monitoring(request: Request, alerts: int = Query(20, ge=0, le=500)) -> JSONResponse:
    """Drift is scored on the current window when asked (and every ``drift_interval_s`` in the background).

    Shape (stable; the dashboard and the simulator read it)::

        {
          "drift": {
            "enabled": true,                      # false (and nothing else) when RADFLOW_DRIFT=false
            "models": {
              "MODEL/VERSION": {
                "model": str, "version": str,
                "status": "ok" | "alert" | "collecting" | "no_reference",
                "reason": str | null,             # e.g. why there is no reference
                "observed": int,                  # predictions seen since load
                "window": {"size": int, "capacity": int, "min": int},
                "thresholds": {"psi", "ks", "embedding", "min_window", "rearm"},
                "alert": bool,                    # any score at/above its threshold now
                "scores": [{"feature": "intensity_mean" | ... | "score:LABEL" | "value" | "embedding" | "view",
                            "group": "input" | "output", "statistic": "psi" | "ks" | "mean_distance",
                            "score": float, "threshold": float, "alert": bool,
                            "pvalue"?: float, "live_mean"?: float, "source"?: str}]
              }
            }
          },
          "online": {...},                        # radflow.monitor.online.online_report (absent if unavailable)
          "alerts": [{"id", "created_at", "kind": "drift" | "auto_rule", "model_name", "model_version",
                      "feature", "statistic", "score", "threshold", "message", "details"}]   # newest first
        }
    """
    return JSONResponse(await _service(request).monitoring(alerts))


# -- admin ------------------------------------------------------------------------------------


def _admin(request: Request) -> InferenceService:
    service = _service(request)
    token = service.settings.admin_token
    if token is None or not token.get_secret_value():
        raise AdminError("admin endpoints are disabled; set RADFLOW_ADMIN_TOKEN to enable them.", status_code=404)
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise AdminError("admin endpoints need 'Authorization: Bearer <token>'.", 401, {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(auth[7:].strip().encode(), token.get_secret_value().encode()):
        raise AdminError("wrong admin token.", 403)
    return service


admin = APIRouter(prefix="/admin", tags=["admin"])


class RoutingIn(BaseModel):
    challenger_weight: float | None = Field(None, ge=0.0, le=1.0)
    """Share of traffic the challenger answers (canary)."""
    shadow: bool | None = None


class ReloadIn(BaseModel):
    model: str | None = None
    """New champion URI (default: reload the current one, e.g. after a promotion)."""
    challenger: str | None = None
    drop_challenger: bool = False


class PromoteIn(BaseModel):
    version: str = Field(min_length=1)
    force: bool = False


@admin.get("/routing")
async def get_routing(service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    return service.require_router().state()


@admin.put("/routing")
async def put_routing(body: RoutingIn, service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    return service.set_routing(body.challenger_weight, body.shadow)


@admin.post("/reload")
async def reload(body: ReloadIn | None = None, service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    body = body or ReloadIn()
    return await service.reload(body.model, body.challenger, body.drop_challenger)


@admin.post("/promote")
async def promote(body: PromoteIn, service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    return await service.promote(body.version, force=body.force)


@admin.post("/rollback")
async def rollback(service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    return await service.rollback()


# -- app --------------------------------------------------------------------------------------


def create_app(settings: ServeSettings | None = None, preloaded: dict[str, LoadedModel] | None = None) -> FastAPI:
    """The service app; models load in the lifespan (startup) unless ``preloaded``; the log is flushed at shutdown."""
    from radflow.serve.v2 import v2
    from radflow.ui import ui_router

    settings = settings or ServeSettings()
    service = InferenceService(settings, preloaded=preloaded)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="radflow",
        summary="Radiograph models over HTTP: /v1 images, /v2 Open Inference Protocol, A/B routing, feedback.",
        lifespan=lifespan,
    )
    app.state.service = service
    _install_handlers(app)
    app.include_router(v1)
    app.include_router(v2)
    app.include_router(admin)
    app.include_router(ui_router())

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(_Metrics, metrics=service.metrics)
    return app
