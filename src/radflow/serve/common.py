"""What every HTTP transport shares: the size-limited body reader, the service lookup, one error handler, metrics.

Every error goes through one handler: :class:`radflow.errors.RadflowError` (client mistakes,
overload, timeouts) becomes ``{"error": msg}`` with its status; anything else is logged and
answered with a generic 500. Request bodies are read with a size limit before anything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radflow.errors import RadflowError
from radflow.inference.errors import PayloadTooLargeError, ServiceError
from radflow.inference.metrics import ServiceMetrics
from radflow.inference.service import InferenceService

__all__ = ["MetricsMiddleware", "install_error_handlers", "label_answer", "read_body", "service_of"]

log = logging.getLogger(__name__)

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


def service_of(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def label_answer(request: Request, arm: dict[str, Any]) -> None:
    """Model labels of the answer, picked up by the metrics middleware."""
    request.state.model = arm


class MetricsMiddleware:
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


def install_error_handlers(app: FastAPI) -> None:
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
