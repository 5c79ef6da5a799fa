"""What every HTTP transport shares: the size-limited body reader, the multipart file reader, the service
lookup, one error handler, the documented error answers, the one middleware (OPTIONS, metrics, audit).

Every error goes through one handler: :class:`radflow.errors.RadflowError` (client mistakes,
overload, timeouts) becomes ``{"error": msg}`` with its status; anything else is logged and
answered with a generic 500. Request bodies are read with a size limit before anything else.
Each route declares the error statuses it really answers with :func:`error_responses`, so the
OpenAPI schema lists every status a client can get (a Schemathesis run checks it). Answers are
encoded with orjson (:func:`json_answer`): several times faster than the standard library on the
scoring routes' floats.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from radflow.errors import RadflowError
from radflow.inference.errors import PayloadTooLargeError, ServiceError
from radflow.inference.metrics import ServiceMetrics
from radflow.inference.service import InferenceService
from radflow.serve.auth import audit_event, write_audit

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = [
    "ErrorBody",
    "RequestMiddleware",
    "admitted",
    "allowed_methods",
    "error_responses",
    "install_error_handlers",
    "json_answer",
    "label_answer",
    "multipart_file",
    "read_body",
    "service_of",
    "settle_heap",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class ErrorBody(BaseModel):
    """Every error answer: one message naming the problem (and the field, file or limit)."""

    error: str


_ERROR_MEANINGS = {
    400: "Malformed request: a body that does not parse, a bad header, or a setting that does not apply.",
    401: "No credentials: send `Authorization: Bearer <token>`.",
    403: "Credentials given but not accepted for this endpoint.",
    404: "No such model, model version or prediction, or the endpoint is disabled.",
    413: "The body is above the server's `max_body_bytes`.",
    415: "The content type (declared, or sniffed from the bytes) is not one this server accepts.",
    422: "The request is well-formed but invalid: the message names the field or the problem with the image.",
    503: "The model or store is still loading, or the queue is full: retry after `Retry-After` seconds.",
    504: "The model did not answer within `request_timeout_s`.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers, each with the ``{"error"}`` body."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _ERROR_MEANINGS[code]}
        if code == 503:
            entry["headers"] = _RETRY_AFTER
        out[code] = entry
    return out


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


def multipart_file(body: bytes, content_type: str, field: str = "file", max_fields: int = 10) -> bytes | None:
    """The contents of file part ``field`` of a ``multipart/form-data`` body already read; None if it has none.

    Starlette's ``request.form()`` streams a body through python-multipart into spooled temporary
    files and reads them back in a thread: most of a small model's request. The body is in memory
    here (read with its size limit), so it goes to python-multipart's ``MultipartParser`` in one
    write and the file's bytes are kept as the parser hands them over. The same rules hold: one
    file at most, ``max_fields`` other fields, every part named; a malformed body is a 400.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError("multipart/form-data needs a boundary: Content-Type: multipart/form-data; boundary=...")
    delimiter = b"--" + boundary
    start = body.find(delimiter)  # anything before it is the preamble, which carries nothing
    if start < 0:
        raise ServiceError("invalid multipart body: it has no part (no line with its boundary).")
    end = padded = start + len(delimiter)
    while body[padded : padded + 1] in (b" ", b"\t"):  # transport padding (RFC 2046), which the parser refuses
        padded += 1
    form = _FormReader(field.encode(), max_fields)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        parser.write(delimiter + body[padded:] if start or padded > end else body)
    except MultipartParseError as exc:
        raise ServiceError(f"invalid multipart body: {exc}") from None
    if not form.ended:
        raise ServiceError(
            "invalid multipart body: a part is cut short (no blank line after its headers or no closing boundary)."
        )
    return b"".join(form.found) if form.found is not None else None


class _FormReader:
    """``MultipartParser`` callbacks that keep one file part's bytes and enforce the form's rules."""

    def __init__(self, field: bytes, max_fields: int):
        self.field, self.max_fields = field, max_fields
        self.files = self.fields = 0
        self.found: list[bytes] | None = None
        self.ended = False
        self._header: list[bytes] = []
        self._value: list[bytes] = []
        self._disposition = b""
        self._keep: list[bytes] | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, a, b: self._header.append(data[a:b]),
            "on_header_value": lambda data, a, b: self._value.append(data[a:b]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition, self._keep = b"", None

    def _header_end(self) -> None:
        if b"".join(self._header).strip().lower() == b"content-disposition":
            self._disposition = b"".join(self._value).strip()
        self._header.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ServiceError('invalid multipart body: every part needs Content-Disposition: form-data; name="...".')
        if b"filename" in options:
            self.files += 1
            if self.files > 1:
                raise ServiceError("invalid multipart body: send one image (one file part) per request.")
            if options[b"name"] == self.field:
                self.found = self._keep = []
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise ServiceError(f"invalid multipart body: more than {self.max_fields} fields.")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep is not None:
            self._keep.append(data[start:end])

    def _end(self) -> None:
        self.ended = True


def json_answer(content: Any, status_code: int = 200) -> Response:
    """A JSON answer encoded with orjson (NumPy arrays and scalars included)."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
        status_code,
        media_type="application/json",
    )


def settle_heap() -> None:
    """Take what is alive now (imported modules, loaded models) out of the cyclic collector's full passes.

    A serving process allocates many short-lived objects per request (a workflow answer: a prediction row,
    dicts and arrays per crop), so the collector runs often, and its full passes walked the whole heap of
    MLflow, FastAPI, SQLAlchemy and ONNX Runtime modules: pauses of about 100 ms every few seconds, the p99
    of ``bench/workflow.py`` (119 ms at one connection; 21 ms with the collector off). Called after models
    or workflows (re)load: what was frozen before is thawed and collected first, so a replaced model's
    cycles are freed, then everything alive is frozen (:func:`gc.freeze`); later objects are collected as usual.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def service_of(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


async def admitted(request: Request) -> AsyncIterator[None]:
    """Dependency of the scoring routes: admission (503 + Retry-After at capacity) before the body is read.

    Held until the answer; the service's own admission inside the same request does not count it again.
    """
    with service_of(request).admission.enter():
        yield


def label_answer(request: Request, arm: dict[str, Any]) -> None:
    """Model labels of the answer, picked up by the metrics middleware."""
    request.state.model = arm


def _route_table(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route of the app, flat: FastAPI >= 0.16x keeps included routers nested (``iter_route_contexts``)."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        yield from routes
    else:
        yield from iter_route_contexts(list(routes))


def allowed_methods(app: Any, scope: Scope) -> tuple[set[str], Any]:
    """(the methods some route answers at this request's path, the first such route); empty for unknown paths."""
    methods: set[str] = set()
    first = None
    for route in _route_table(app.routes):
        declared = getattr(route, "methods", None)
        if declared and route.matches(scope)[0] is not Match.NONE:
            methods |= set(declared)
            first = first or route
    return methods, first


class RequestMiddleware:
    """The one ASGI middleware: honest ``OPTIONS``/405 ``Allow``, request metrics, the audit log.

    One wrapper of ``send`` reads the answer's status once, one clock times the request; each
    middleware used to wrap ``send`` and read the status on its own, a third of what a request cost
    beyond decoding and inference.

    ``OPTIONS`` and ``Allow``: Starlette answers 405 to ``OPTIONS`` on a route that does not declare
    it, which tells a client the path refuses a method every HTTP server is expected to understand
    (RFC 9110 §9.3.7), and its 405s name only the first route at the path (``Allow: GET`` where PUT
    works too). Here an ``OPTIONS`` on an existing path answers 204, and a 405's ``Allow`` is
    replaced, with every method the app's routes declare at that path (plus OPTIONS); unknown paths
    fall through to the router's 404. No CORS headers are sent: the server configures no CORS, so a
    browser preflight from another origin is refused, as it should be.

    Metrics: per-endpoint request counts and latency labelled with the model that answered
    (:func:`label_answer`), the in-flight gauge, 503/504 rejections. OPTIONS answers are counted too.

    Audit: the event :func:`radflow.serve.auth.authorize` prepared (or a 403 refusal) is appended by
    :func:`radflow.serve.auth.write_audit` with the answer's status, after the answer is sent.
    """

    def __init__(self, app: ASGIApp, service: InferenceService):
        self.app = app
        self.service = service
        self.metrics: ServiceMetrics = service.metrics

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 405:
                    message = {**message, "headers": _with_allow(message.get("headers", []), scope)}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if scope["method"] == "OPTIONS" and await _answer_options(scope, send):
                status = 204
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            model = state.get("model") or {}
            labels = (endpoint, model.get("name", ""), model.get("version", ""), model.get("arm", ""))
            self.metrics.requests.labels(*labels, str(status)).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
            if status in (503, 504):
                self.metrics.rejected.labels("overload" if status == 503 else "timeout").inc()
            event = audit_event(scope, status)
            if event is not None:
                await write_audit(self.service, event, state.get("identity"), status)


def _allow(methods: set[str]) -> bytes:
    return ", ".join(sorted(methods | {"OPTIONS"})).encode()


async def _answer_options(scope: Scope, send: Callable[[Message], Awaitable[None]]) -> bool:
    """Answer ``OPTIONS`` on an existing path with 204 and its methods; False (not answered) for unknown paths."""
    methods, route = allowed_methods(scope["app"], scope)
    if not methods:
        return False
    scope.setdefault("route", route)  # the request is labelled by this endpoint
    await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", _allow(methods))]})
    await send({"type": "http.response.body", "body": b""})
    return True


def _with_allow(headers: Iterable[tuple[bytes, bytes]], scope: Scope) -> list[tuple[bytes, bytes]]:
    """``headers`` of a 405 with ``Allow`` naming every method of the path."""
    methods, _ = allowed_methods(scope["app"], scope)
    return [*((k, v) for k, v in headers if k.lower() != b"allow"), (b"allow", _allow(methods))]


def _error(status: int, msg: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


_VALIDATION_REF = "#/components/schemas/HTTPValidationError"


def _document_error_body(app: FastAPI) -> None:
    """Document 422 as the ``{"error"}`` body the handler answers, not FastAPI's ``{"detail": [...]}``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operation in (op for ops in schema.get("paths", {}).values() for op in ops.values()):
            content = operation.get("responses", {}).get("422", {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == _VALIDATION_REF:
                content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
        components = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in components:
            components.pop("HTTPValidationError")
            components.pop("ValidationError", None)
            components.setdefault("ErrorBody", ErrorBody.model_json_schema())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """One handler per error family, each answering ``{"error": msg}``; the schema documents that body."""
    _document_error_body(app)

    @app.exception_handler(RadflowError)
    async def _radflow(_request: Request, exc: RadflowError) -> JSONResponse:
        return _error(exc.status_code, str(exc), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":  # its loc is a character offset, not a field
                at = [p for p in err.get("loc", ()) if p != "body"]
                reason = (err.get("ctx") or {}).get("error", "malformed")
                parts.append(f"the body is not valid JSON ({reason}" + (f" at character {at[0]})" if at else ")"))
                continue
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail, cause = str(exc.detail), exc.__cause__
        if isinstance(cause, UnicodeDecodeError):  # FastAPI says only "There was an error parsing the body"
            detail = f"the body is not UTF-8 text ({cause.reason} at byte {cause.start}); send UTF-8 JSON."
        return _error(exc.status_code, detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return _error(500, "internal server error; the incident was logged.")
