"""Authentication and the audit log over HTTP: one dependency on every route, one rule table, the audit events.

:func:`authorize` is attached where the app includes each router (:mod:`radflow.serve.app`), so no
route of ``/v1``, ``/v2``, admin or the UI is reachable without it; :func:`access_rule` says what a
route needs. A route no rule covers is refused (fail closed) and ``tests/serve/test_auth.py``
fails, so a new route gets a rule when it is added. Open without credentials: the health probes,
the UI's pages and static files (they hold no data; every call they make needs a token), and
FastAPI's ``/docs`` and ``/openapi.json``. ``/metrics`` needs the operator role unless
``public_metrics`` is set.

With ``auth: off`` (the local demo) everything but admin is open, and admin takes the admin token
as before. Either way, views of predictions and stored images, feedback, admin changes and every
refusal of those are appended to the store's audit log (:func:`write_audit`, called by the one request
middleware, :class:`radflow.serve.common.RequestMiddleware`) once the answer (and its status) is known.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request

from radflow.auth import (
    ANONYMOUS,
    AuthenticationError,
    Authenticator,
    Identity,
    OidcVerifier,
    Permission,
    PermissionDeniedError,
    TokenVerifier,
)
from radflow.inference.errors import AdminError
from radflow.inference.service import InferenceService
from radflow.inference.settings import ServeSettings

__all__ = [
    "AUTH_RESPONSES",
    "FASTAPI_OPEN_PATHS",
    "OPEN_PATHS",
    "AccessRule",
    "access_rule",
    "audit_detail",
    "audit_event",
    "authenticator_for",
    "authorize",
    "document_auth",
    "identity_of",
    "log_auth_mode",
    "write_audit",
]

log = logging.getLogger(__name__)

_ERROR_BODY = {
    "application/json": {
        "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    }
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "No credentials, or unknown, revoked or expired ones: send `Authorization: Bearer <token>` "
        "(a radflow API token, or an OIDC access token when the server is configured for one).",
        "content": _ERROR_BODY,
    },
    403: {"description": "The caller's role does not allow this route.", "content": _ERROR_BODY},
}
"""OpenAPI ``responses=`` of a route behind :func:`authorize` (the app adds them to every such route)."""

OPEN_PATHS = frozenset({"/v1/health", "/v2/health/live", "/v2/health/ready", "/", "/dashboard", "/ui/static/{name}"})
"""Routes anyone may call: liveness/readiness probes and the UI's data-free pages and files."""
FASTAPI_OPEN_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
"""FastAPI's own documentation routes (the API's shape, no data); they carry no dependency."""


@dataclass(frozen=True)
class AccessRule:
    """What a route needs (``permission`` None: open) and the audit action it records (None: not audited)."""

    permission: Permission | None
    audit: str | None = None


_OPEN = AccessRule(None)
_EXACT: dict[tuple[str, str], AccessRule] = {
    ("POST", "/v1/predict"): AccessRule("predict"),
    ("GET", "/v1/predictions/{prediction_id}"): AccessRule("view", "view_prediction"),
    ("GET", "/v1/predictions/{prediction_id}/heatmap.png"): AccessRule("view", "view_heatmap"),
    ("GET", "/v1/predictions/{prediction_id}/mask.png"): AccessRule("view", "view_mask"),
    ("POST", "/v1/feedback"): AccessRule("feedback", "feedback"),
    ("GET", "/v1/monitoring"): AccessRule("monitor"),
    ("GET", "/v1/worklist"): AccessRule("view", "list_worklist"),
    ("GET", "/v1/workflows"): AccessRule("predict"),
    ("POST", "/v1/workflows/{name}/predict"): AccessRule("predict"),
    ("GET", "/v1/ui/recent"): AccessRule("view", "list_recent"),
    ("GET", "/v1/ui/predictions/{prediction_id}/image.png"): AccessRule("view", "view_image"),
    ("GET", "/v1/ui/summary"): AccessRule("monitor"),
    ("GET", "/v1/ui/models"): AccessRule("monitor"),
    ("GET", "/v1/ui/registry/versions/{model_version}/report.html"): AccessRule("monitor"),
    ("GET", "/metrics"): AccessRule("monitor"),
    ("GET", "/admin/routing"): AccessRule("admin"),
    # Label Studio's ML backend (radflow.serve.ml_backend): scoring for setup/predict, feedback for annotations
    ("GET", "/label-studio/health"): _OPEN,
    ("POST", "/label-studio/setup"): AccessRule("predict"),
    ("POST", "/label-studio/predict"): AccessRule("predict"),
    ("POST", "/label-studio/webhook"): AccessRule("feedback", "label_studio_annotation"),
}
_PREFIXES: tuple[tuple[str, AccessRule], ...] = (
    ("/v2/health/", _OPEN),
    ("/v2", AccessRule("predict")),  # Open Inference Protocol: metadata, ready, infer, config, stats
)


def access_rule(method: str, path: str, public_metrics: bool = False) -> AccessRule | None:
    """The rule of the route ``method path`` (the route's template, e.g. ``/v1/predictions/{prediction_id}``).

    None when no rule covers it: the route is refused until one does. HEAD follows GET.
    """
    method = "GET" if method == "HEAD" else method
    if path in OPEN_PATHS or (public_metrics and path == "/metrics"):
        return _OPEN
    if path.startswith("/admin/"):
        # Every change is audited; reading the routing state is not.
        return _EXACT.get((method, path)) or AccessRule("admin", "admin." + path.removeprefix("/admin/"))
    found = _EXACT.get((method, path))
    if found is not None:
        return found
    for prefix, rule in _PREFIXES:
        if path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
            return rule
    return None


def authenticator_for(settings: ServeSettings, service: InferenceService) -> Authenticator:
    """The authenticator of ``settings`` (ConfigError for an incomplete OIDC configuration)."""
    admin = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    oidc = None
    if settings.auth == "oidc":
        s = settings
        if not (s.oidc_issuer and s.oidc_audience and s.oidc_jwks):
            from radflow.errors import ConfigError

            missing = [n for n in ("oidc_issuer", "oidc_audience", "oidc_jwks") if not getattr(s, n)]
            raise ConfigError(
                f"auth: oidc needs {', '.join(missing)} (RADFLOW_{missing[0].upper()} or serve: in params)."
            )
        oidc = OidcVerifier(
            s.oidc_issuer,
            s.oidc_audience,
            s.oidc_jwks,
            roles_claim=s.oidc_roles_claim,
            role_map=dict(s.oidc_role_map),
            name_claim=s.oidc_name_claim,
            algorithms=s.oidc_algorithms,
            leeway_s=s.oidc_leeway_s,
        )
    tokens = TokenVerifier(service.require_store) if settings.auth != "off" else None
    return Authenticator(settings.auth, tokens=tokens, oidc=oidc, admin_token=admin)


def log_auth_mode(settings: ServeSettings, service: InferenceService) -> None:
    """Say at start who may call this server; loudly when anyone may."""
    if settings.auth == "off":
        log.warning(
            "AUTHENTICATION IS OFF (auth: off): anyone who can reach this port can score images, list "
            "predictions and download stored radiographs. Use this for the local demo only; `radflow serve` "
            "without --no-auth requires API tokens."
        )
        return
    from radflow.store import list_tokens

    count = len(list_tokens(service.require_store()))
    extra = f", OIDC issuer {settings.oidc_issuer}" if settings.auth == "oidc" else ""
    admin = " and the admin token (operator)" if settings.admin_token is not None else ""
    log.info("authentication: %s (%d active API tokens%s%s)", settings.auth, count, admin, extra)
    if count == 0 and settings.admin_token is None and settings.auth == "tokens":
        log.warning(
            "no API tokens exist yet, so every request will be refused: create one with "
            "`radflow token create --role reader --name NAME --store-url %s`",
            settings.resolved_store_url(),
        )


_BEARER_SCHEME = {
    "HTTPBearer": {
        "type": "http",
        "description": "A radflow API token (`radflow token create`) or, when configured, an OIDC access token.",
        "scheme": "bearer",
    }
}
"""The OpenAPI security scheme every route behind :func:`authorize` names (added by :func:`document_auth`)."""


def identity_of(request: Request) -> Identity:
    """Who made ``request`` (set by :func:`authorize`; anonymous on open routes and with auth off)."""
    identity: Identity = getattr(request.state, "identity", None) or ANONYMOUS
    return identity


def audit_detail(request: Request, **values: Any) -> None:
    """Add ``values`` (ids, versions, weights: never PHI) to the audit event of ``request``, if it has one."""
    event = request.scope.get("state", {}).get("audit")
    if event is not None:
        event["detail"] = {**(event.get("detail") or {}), **{k: v for k, v in values.items() if v is not None}}


async def _feedback_target(request: Request) -> str | None:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    target = body.get("prediction_id") if isinstance(body, dict) else None
    return target[:64] if isinstance(target, str) else None


async def authorize(request: Request) -> Identity:
    """The caller of ``request``, allowed to call its route; 401 without valid credentials, 403 for the wrong role.

    It reads the ``Authorization`` header itself: FastAPI's ``HTTPBearer`` as a sub-dependency cost every
    request a dependency level for a parse done here anyway; the scheme is documented by :func:`document_auth`.
    """
    auth: Authenticator = request.app.state.auth
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path  # request.url builds the whole URL: only when needed
    rule = access_rule(request.method, path, request.app.state.service.settings.public_metrics)
    if rule is None:
        log.error("no access rule covers %s %s: refused (add one to radflow.serve.auth)", request.method, path)
        raise PermissionDeniedError(f"{request.method} {path} has no access rule; it is refused.")
    if rule.audit is not None:
        target = request.path_params.get("prediction_id")
        if rule.audit == "feedback":
            target = await _feedback_target(request)
        resource = f"prediction:{target}" if target else None
        if rule.permission == "admin":
            resource = f"model:{request.app.state.service.settings.model_name}"
        request.state.audit = {"action": rule.audit, "resource": resource, "detail": None}
    if rule.permission is None or (not auth.enabled and rule.permission != "admin"):
        request.state.identity = ANONYMOUS
        return ANONYMOUS
    if not auth.enabled and auth.admin_token is None:
        raise AdminError("admin endpoints are disabled; set RADFLOW_ADMIN_TOKEN to enable them.", status_code=404)
    credential = auth.bearer(request.headers.get("authorization"))
    identity = auth.cached(credential)
    if identity is None:
        try:
            identity = await asyncio.to_thread(auth.authenticate, credential)
        except AuthenticationError as exc:
            if not auth.enabled:  # the admin token alone: a wrong one is a refusal, as it always was
                raise PermissionDeniedError("wrong admin token.") from None
            raise exc from None
    request.state.identity = identity
    identity.require(rule.permission)
    return identity


def audit_event(scope: MutableMapping[str, Any], status: int) -> dict[str, Any] | None:
    """The audit event of a request answered with ``status``: the one :func:`authorize` prepared, a 403's
    ``denied`` (any route, once the caller was identified), or None (nothing to record)."""
    state = scope.get("state") or {}
    event: dict[str, Any] | None = state.get("audit")
    if event is None and status == 403 and "identity" in state:
        event = {"action": "denied", "resource": f"{scope['method']} {getattr(scope.get('route'), 'path', '?')}"}
    return event


async def write_audit(service: InferenceService, event: dict[str, Any], identity: Identity | None, status: int) -> None:
    """Append ``event`` with the answer's ``status`` to the audit log, once the answer is sent.

    Written after the answer (the status is known then, and the caller does not wait on the write),
    by :class:`radflow.serve.common.RequestMiddleware`. A failed write is logged as an error and never
    turns an answer into a failure.
    """
    from radflow.store import append_audit

    store = service.store
    if store is None:
        return
    who = identity or Identity("unauthenticated", None, "anonymous")
    try:
        await asyncio.to_thread(
            append_audit,
            store,
            who.name,
            event["action"],
            via=who.via,
            role=who.role,
            resource=event.get("resource"),
            status=status,
            detail=event.get("detail"),
        )
    except Exception:
        log.exception("could not append the audit event %s of %s", event.get("action"), who.name)


def document_auth(app: FastAPI, enabled: bool) -> None:
    """Document the bearer scheme on every route behind :func:`authorize`, and 401/403 where they can be answered
    (admin always; all but the open routes with auth on). Done on the generated schema, so it holds however
    the routers were included (every route in the schema is behind :func:`authorize`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                operation.setdefault("security", [{name: []} for name in _BEARER_SCHEME])
                if path in OPEN_PATHS or not (enabled or path.startswith("/admin/")):
                    continue
                for code, doc in AUTH_RESPONSES.items():
                    operation["responses"].setdefault(str(code), doc)
        schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(_BEARER_SCHEME)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
