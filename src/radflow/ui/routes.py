"""The web UI's routes: the reader page (``/``), the operator dashboard (``/dashboard``), their static
files (``/ui/static/...``) and the small JSON views under ``/v1/ui`` the pages poll.

Everything is shipped in the package (no CDN, no build step): hand-written HTML, CSS and JS, with
charts drawn as inline SVG. Pages carry a strict Content-Security-Policy, so the scripts can only
talk to this server.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from radflow.auth import redact_paths
from radflow.errors import NotFoundError
from radflow.inference.service import InferenceService
from radflow.modelref import parse_model_ref
from radflow.ui.summary import (
    evaluation_report,
    feedback_stats,
    metrics_snapshot,
    recent_predictions,
    registry_versions,
)

__all__ = ["STATIC_TYPES", "ui_router"]

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
"""File types served from ``static/`` (the package data globs of pyproject.toml ship exactly these)."""
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_REPORT_HEADERS = {
    # The report is a document MLflow stored, not one of ours: no script runs in it, and it reaches nothing.
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-cache",
}


def _static_file(name: str) -> bytes:
    """A shipped UI file by bare name; anything else (sub-paths, unknown types) is not found."""
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    root = resources.files("radflow.ui") / "static"
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        raise NotFoundError(f"no UI file {name!r}.")
    entry = root / name
    if not entry.is_file():
        raise NotFoundError(f"no UI file {name!r}.")
    return entry.read_bytes()


def ui_router(service: InferenceService | None = None) -> APIRouter:
    """Routes of the web UI; ``service`` defaults to the app's ``app.state.service`` at request time."""
    # Every JSON view reads the store or the models, which answer 503 while they open (radflow.serve.common
    # documents the /v1 and /v2 errors the same way; the UI cannot import the transport package).
    router = APIRouter(tags=["ui"], responses={503: {"description": "The store or the models are still loading."}})

    def svc(request: Request) -> InferenceService:
        found: InferenceService = service or request.app.state.service
        return found

    def page(name: str) -> HTMLResponse:
        return HTMLResponse(_static_file(name), headers=_PAGE_HEADERS)

    @router.get("/", include_in_schema=False)
    async def reader_page() -> HTMLResponse:
        return page("reader.html")

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return page("dashboard.html")

    @router.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        body = _static_file(name)
        kind = STATIC_TYPES["." + name.rsplit(".", 1)[-1]]
        return Response(
            body, media_type=kind, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        )

    @router.get("/v1/ui/recent", summary="Recent answered predictions with their latest feedback (UI history)")
    async def recent(request: Request, limit: int = Query(20, ge=1, le=500)) -> JSONResponse:
        store = svc(request).require_store()
        return JSONResponse({"predictions": await asyncio.to_thread(recent_predictions, store, limit)})

    @router.get(
        "/v1/ui/predictions/{prediction_id}/image.png",
        summary="The stored input of a prediction as PNG",
        response_class=FileResponse,
        responses={
            200: {"content": {"image/png": {}}, "description": "The stored 8-bit input."},
            404: {"description": "No such prediction, or its input is not stored."},
        },
    )
    async def input_image(request: Request, prediction_id: str) -> FileResponse:
        _, path = await svc(request).stored_input(prediction_id, "preview")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/v1/ui/summary", summary="Dashboard snapshot: traffic counters, routing, feedback accuracy")
    async def summary(request: Request) -> JSONResponse:
        service_ = svc(request)
        store = service_.require_store()
        token = service_.settings.admin_token
        auth_on = service_.settings.auth != "off"
        body: dict[str, Any] = {
            "metrics": metrics_snapshot(service_.metrics.render().decode()),
            "routing": _routing(service_),
            "feedback": await asyncio.to_thread(feedback_stats, store),
            "admin_enabled": auth_on or (token is not None and bool(token.get_secret_value())),
            "auth": service_.settings.auth,
        }
        return JSONResponse(body)

    @router.get("/v1/ui/models", summary="Served models and, when the registry is reachable, its versions")
    async def models(request: Request) -> JSONResponse:
        service_ = svc(request)
        s = service_.settings
        routing = _routing(service_)
        registry: dict[str, Any] | None = None
        note = _NO_REGISTRY
        if _uses_registry(service_):
            try:
                registry = await asyncio.to_thread(registry_versions, s.model_name, s.resolved_tracking_uri())
                note = ""
            except Exception as exc:  # the registry is optional to the page: show why it is missing
                note = f"registry unavailable: {redact_paths(str(exc))}"
        return JSONResponse({"routing": routing, "registry": registry, "registry_note": note})

    @router.get(
        "/v1/ui/registry/versions/{model_version}/report.html",
        summary="The evaluation report (HTML) of a registered version of the served model",
        response_class=HTMLResponse,
        responses={
            200: {"content": {"text/html": {}}, "description": "The evaluation's report.html from the version's run."},
            404: {"description": "No such version, or its run has no evaluation report."},
        },
    )
    async def report(request: Request, model_version: str) -> HTMLResponse:
        service_ = svc(request)
        if not _uses_registry(service_):
            raise NotFoundError(f"no evaluation report: {_NO_REGISTRY}")
        s = service_.settings
        body = await asyncio.to_thread(evaluation_report, s.model_name, model_version, s.resolved_tracking_uri())
        return HTMLResponse(body, headers=_REPORT_HEADERS)

    return router


_NO_REGISTRY = "the served models are files, not registry versions."


def _uses_registry(service: InferenceService) -> bool:
    """Whether this server has a registry to show: a workspace, a tracking URI, or an arm served from it."""
    s = service.settings
    return (
        s.workspace is not None
        or s.tracking_uri is not None
        or any(parse_model_ref(arm.loaded.uri).in_registry for arm in service.require_router().arms())
    )


def _routing(service: InferenceService) -> dict[str, Any]:
    router = service.require_router()
    state = router.state()
    for arm in router.arms():
        state[arm.arm]["served"] = arm.served
        state[arm.arm]["task"] = arm.model.meta.task
        state[arm.arm]["labels"] = list(arm.model.labels)
    return state
