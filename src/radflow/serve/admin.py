"""``/admin``: routing weights, reload, promote and roll back, behind a bearer token (disabled without one)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from radflow.inference.errors import AdminError
from radflow.inference.service import InferenceService
from radflow.serve.common import service_of

__all__ = ["admin"]


def _admin(request: Request) -> InferenceService:
    service = service_of(request)
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
