"""``/admin``: routing weights, reload, promote and roll back; operators only.

Who may call these is decided by :func:`radflow.serve.auth.authorize` (the operator role, or the admin
token; with ``auth: off`` only the admin token, and without one the routes answer 404). Every change
is written to the audit log with what was asked. A failed change answers with the model names and
versions it concerns, never the server's file paths: the full error goes to the server log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from radflow.auth import Identity, redact_paths
from radflow.errors import RadflowError
from radflow.inference.errors import AdminError
from radflow.inference.service import InferenceService
from radflow.serve.auth import AUTH_RESPONSES, audit_detail, authorize
from radflow.serve.common import error_responses, service_of
from radflow.serve.workflows import reload_workflows

__all__ = ["admin"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _admin(request: Request, _identity: Identity = Depends(authorize)) -> InferenceService:
    # authorize also guards the whole router where the app includes it; FastAPI runs it once per request.
    return service_of(request)


async def _change(request: Request, what: str, change: Awaitable[T], sent: tuple[str | None, ...] = ()) -> T:
    """Await an admin change; a refusal keeps its status, its message loses the server's paths (logged in full)."""
    try:
        return await change
    except RadflowError as exc:
        log.warning("admin %s refused: %s", what, exc)
        public = redact_paths(str(exc), keep=sent)
        audit_detail(request, error=public)
        raise AdminError(public, exc.status_code, getattr(exc, "headers", None)) from None


async def _run(fn: Callable[[], T]) -> T:
    return fn()


admin = APIRouter(prefix="/admin", tags=["admin"], responses={**AUTH_RESPONSES, **error_responses(404, 503)})


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


@admin.put("/routing", responses=error_responses(400, 422))
async def put_routing(request: Request, body: RoutingIn, service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    audit_detail(request, challenger_weight=body.challenger_weight, shadow=body.shadow)
    return await _change(request, "routing", _run(lambda: service.set_routing(body.challenger_weight, body.shadow)))


@admin.post("/reload", responses=error_responses(400, 422))
async def reload(
    request: Request, body: ReloadIn | None = None, service: InferenceService = Depends(_admin)
) -> dict[str, Any]:
    """The models again (a new champion or challenger, or the same aliases re-resolved), then the workspace's
    workflows (:func:`radflow.serve.workflows.reload_workflows`): ``routing`` state plus ``workflows``, each
    ``ready`` or listed with the ``error`` that keeps it from loading."""
    body = body or ReloadIn()
    audit_detail(request, model=body.model, challenger=body.challenger, drop_challenger=body.drop_challenger or None)
    change = service.reload(body.model, body.challenger, body.drop_challenger)
    routing = await _change(request, "reload", change, sent=(body.model, body.challenger))
    return {**routing, "workflows": await _change(request, "reload", reload_workflows(request))}


@admin.post("/promote", responses=error_responses(400, 422))
async def promote(request: Request, body: PromoteIn, service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    audit_detail(request, version=body.version, force=body.force or None)
    return await _change(request, "promote", service.promote(body.version, force=body.force))


@admin.post("/rollback", responses=error_responses(400))
async def rollback(request: Request, service: InferenceService = Depends(_admin)) -> dict[str, Any]:
    return await _change(request, "rollback", service.rollback())
