"""Access control over HTTP: every route of the app needs a token of the right role, OIDC bearer tokens,
the audit log, and admin errors that do not reveal the server's paths.

The route tests enumerate ``app.routes``: a route added without the access dependency, or without
a rule in :mod:`radflow.serve.auth`, fails here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from radflow.auth import (
    ROLES,
    AuthenticationError,
    Authenticator,
    OidcVerifier,
    TokenVerifier,
    create_token,
    redact_paths,
    roles_allowing,
)
from radflow.config import ServeConfig
from radflow.errors import ConfigError
from radflow.inference import ServeSettings
from radflow.serve.auth import FASTAPI_OPEN_PATHS, OPEN_PATHS, access_rule, authorize
from radflow.store import Store, audit_events, revoke_tokens
from tests.serve.harness import AppHarness, metric_value
from tests.serve.models import png_bytes

ISSUER = "https://idp.example.org/realms/radiology"
AUDIENCE = "radflow"


def _settings(model: Path, root: Path, **extra: Any) -> ServeSettings:
    return ServeSettings(
        model=str(model), store_url=f"sqlite:///{root / 'serving.db'}", threads=1, drift=False, **extra
    )


@pytest.fixture(scope="module")
def secured(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("auth")
    harness = AppHarness(_settings(onnx_pair[0], root, auth="tokens"))
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def tokens(secured: AppHarness) -> dict[str, dict[str, str]]:
    """One Authorization header per role."""
    store = secured.service.require_store()
    return {role: {"Authorization": f"Bearer {create_token(store, f'{role}-1', role)[0]}"} for role in ROLES}


@pytest.fixture(scope="module")
def prediction_id(secured: AppHarness, tokens: dict[str, dict[str, str]]) -> str:
    answer = secured.request(
        "POST", "/v1/predict", content=png_bytes(3), headers={**tokens["client"], "content-type": "image/png"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def _calls_authorize(route: Any) -> bool:
    dependant = getattr(route, "dependant", None)
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        dep = pending.pop()
        if dep.call is authorize:
            return True
        pending.extend(dep.dependencies)
    return False


def _routes(harness: AppHarness) -> list[tuple[str, str, Any]]:
    """(method, path, route) of every route the app answers, with the dependencies it was included with."""
    try:  # FastAPI >= 0.120 keeps included routers as branches of app.routes
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(harness.app.routes))
    except ImportError:
        routes = list(harness.app.routes)
    found = []
    for route in routes:
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, path, route))
    return found


def test_every_route_is_behind_the_access_check_or_documented_open(secured: AppHarness) -> None:
    unguarded, unruled = [], []
    for method, path, route in _routes(secured):
        if path in FASTAPI_OPEN_PATHS:
            continue
        if not _calls_authorize(route):
            unguarded.append(f"{method} {path}")
        if access_rule(method, path) is None:
            unruled.append(f"{method} {path}")
    assert not unguarded, f"routes without the authorize dependency (include them in serve/app.py): {unguarded}"
    assert not unruled, f"routes without an access rule in radflow.serve.auth (refused until given one): {unruled}"


def _example(
    harness: AppHarness, method: str, path: str, prediction_id: str, operator: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """(url, request kwargs) of a valid call of one route."""
    arm = harness.service.require_router().champion
    url = path.replace("/ui/static/{name}", "/ui/static/reader.js").replace("{prediction_id}", prediction_id)
    url = url.replace("{name}", arm.name).replace("{model_version}", arm.version)
    kwargs: dict[str, Any] = {}
    if path == "/v1/predict":
        kwargs = {"content": png_bytes(4), "headers": {"content-type": "image/png"}}
    elif path.endswith("/heatmap.png"):
        url += f"?label={arm.model.labels[0]}"
    elif path == "/v1/feedback":
        kwargs = {"json": {"prediction_id": prediction_id, "correct": True, "comment": "Jane Doe, 1950-01-01"}}
    elif path.endswith("/infer"):
        shape = harness.request("GET", f"/v2/models/{arm.name}", headers=operator).json()["inputs"][0]["shape"]
        dims = [1, *shape[1:]]
        n = dims[1] * dims[2] * dims[3]
        kwargs = {"json": {"inputs": [{"name": "image", "shape": dims, "datatype": "FP32", "data": [0.0] * n}]}}
    elif path == "/admin/routing" and method == "PUT":
        kwargs = {"json": {"shadow": False}}
    elif path == "/admin/reload":
        kwargs = {"json": {}}
    elif path == "/admin/promote":
        kwargs = {"json": {"version": "2"}}
    return url, kwargs


_NOT_FOR_THIS_MODEL = {
    "/v1/predictions/{prediction_id}/mask.png": 422,
    "/v1/ui/registry/versions/{model_version}/report.html": 404,  # served from a file: no registry versions
    "/v1/workflows/{name}/predict": 404,  # no workspace, so no workflows (tests/workflow serves one)
}
"""Routes whose valid call needs another model than this test's multi-label file, and what they answer."""


def test_each_route_answers_401_without_a_token_403_for_a_lesser_role_and_2xx_for_its_role(
    secured: AppHarness, tokens: dict[str, dict[str, str]], prediction_id: str
) -> None:
    service = secured.service
    # The registry calls are not what this test is about: they answer from stubs here.
    service.promote = AsyncMock(return_value={"registry": {}, "routing": {}})  # type: ignore[method-assign]
    service.rollback = AsyncMock(return_value={"registry": {}, "routing": {}})  # type: ignore[method-assign]
    problems: list[str] = []
    checked = 0
    for method, path, _route in _routes(secured):
        if path in FASTAPI_OPEN_PATHS:
            continue
        rule = access_rule(method, path)
        assert rule is not None
        url, kwargs = _example(secured, method, path, prediction_id, tokens["operator"])
        extra_headers = kwargs.pop("headers", {})

        def call(
            headers: dict[str, str],
            method: str = method,
            url: str = url,
            kwargs: dict[str, Any] = kwargs,
            extra: dict[str, str] = extra_headers,
        ) -> httpx.Response:
            return secured.request(method, url, headers={**extra, **headers}, **kwargs)

        where = f"{method} {path}"
        if rule.permission is None:
            got = call({})
            if got.status_code in (401, 403):
                problems.append(f"{where} is documented open but answered {got.status_code}")
            continue
        anonymous = call({})
        if anonymous.status_code != 401 or "Bearer" not in anonymous.headers.get("www-authenticate", ""):
            problems.append(f"{where} without a token answered {anonymous.status_code}, not 401 + WWW-Authenticate")
        allowed = roles_allowing(rule.permission)
        lesser = [r for r in ROLES if r not in allowed]
        if lesser:
            denied = call(tokens[lesser[-1]])
            if denied.status_code != 403:
                problems.append(f"{where} with role {lesser[-1]} answered {denied.status_code}, not 403")
        right = call(tokens[allowed[0]])
        if path in _NOT_FOR_THIS_MODEL and right.status_code == _NOT_FOR_THIS_MODEL[path]:
            checked += 1  # let through, and refused for what the multi-label model is, not for who asked
            continue
        if not 200 <= right.status_code < 300:
            problems.append(f"{where} with role {allowed[0]} answered {right.status_code}: {right.text[:200]}")
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 20  # /v1, /v2, /v1/ui, /admin and /metrics were all exercised


def test_http_basic_carries_a_token_as_its_password_for_label_studio(
    secured: AppHarness, tokens: dict[str, dict[str, str]]
) -> None:
    import base64

    token = tokens["operator"]["Authorization"].removeprefix("Bearer ")
    basic = "Basic " + base64.b64encode(f"label-studio:{token}".encode()).decode()
    assert secured.request("GET", "/v1/ui/recent", headers={"Authorization": basic}).status_code == 200


def test_a_wrong_token_is_401_and_the_open_probes_and_pages_need_none(secured: AppHarness) -> None:
    wrong = secured.request("GET", "/v1/ui/recent", headers={"Authorization": "Bearer rf_0123456789ab_" + "x" * 43})
    assert wrong.status_code == 401 and "unknown API token" in wrong.json()["error"]
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = secured.request("GET", "/v1/ui/recent", headers={"Authorization": "Basic YTpi"})  # a:b
    assert basic.status_code == 401 and "unknown credential" in basic.json()["error"]
    for broken in ("Basic !!!", "Basic YQ==", "Digest abc"):  # not base64, no password, another scheme
        refused = secured.request("GET", "/v1/ui/recent", headers={"Authorization": broken})
        assert refused.status_code == 401 and "Bearer <token>" in refused.json()["error"], broken
    for path in ("/v2/health/live", "/v2/health/ready", "/", "/dashboard", "/ui/static/common.js", "/docs"):
        assert secured.request("GET", path).status_code == 200, path
    assert {"/v2/health/live", "/v2/health/ready", "/ui/static/{name}"} <= OPEN_PATHS


def test_stored_radiographs_and_recent_predictions_are_no_longer_public(
    secured: AppHarness, tokens: dict[str, dict[str, str]], prediction_id: str
) -> None:
    """The issue's two examples: /v1/ui/recent and /v1/ui/predictions/{id}/image.png."""
    image = f"/v1/ui/predictions/{prediction_id}/image.png"
    assert secured.request("GET", "/v1/ui/recent").status_code == 401
    assert secured.request("GET", image).status_code == 401
    assert secured.request("GET", image, headers=tokens["client"]).status_code == 403
    shown = secured.request("GET", image, headers=tokens["reader"])
    assert shown.status_code == 200 and shown.content.startswith(b"\x89PNG")


def test_openapi_documents_401_and_403_and_the_bearer_scheme(secured: AppHarness) -> None:
    spec = secured.request("GET", "/openapi.json").json()
    predict = spec["paths"]["/v1/predict"]["post"]
    assert {"401", "403"} <= set(predict["responses"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert predict["security"] == [{"HTTPBearer": []}]  # documented on the schema: authorize reads the header itself
    assert "401" not in spec["paths"]["/v2/health/live"]["get"]["responses"]


def test_views_feedback_admin_changes_and_refusals_are_audited_without_phi(
    secured: AppHarness, tokens: dict[str, dict[str, str]], prediction_id: str
) -> None:
    store = secured.service.require_store()
    before = audit_events(store, limit=1)[0]["id"] if audit_events(store, limit=1) else 0
    reader, operator = tokens["reader"], tokens["operator"]
    secured.request("GET", f"/v1/ui/predictions/{prediction_id}/image.png", headers=reader)
    secured.request("GET", f"/v1/predictions/{prediction_id}", headers=reader)
    comment = {"prediction_id": prediction_id, "correct": False, "reader": "dr-k", "comment": "John Smith MRN 123"}
    assert secured.request("POST", "/v1/feedback", json=comment, headers=reader).status_code == 201
    assert secured.request("PUT", "/admin/routing", json={"shadow": False}, headers=operator).status_code == 200
    assert secured.request("PUT", "/admin/routing", json={"shadow": False}, headers=reader).status_code == 403
    assert secured.request("GET", f"/v1/ui/predictions/{prediction_id}/image.png").status_code == 401
    events = [e for e in reversed(audit_events(store, limit=50)) if e["id"] > before]
    got = [(e["actor"], e["role"], e["action"], e["resource"], e["status"]) for e in events]
    resource = f"prediction:{prediction_id}"
    assert got == [
        ("reader-1", "reader", "view_image", resource, 200),
        ("reader-1", "reader", "view_prediction", resource, 200),
        ("reader-1", "reader", "feedback", resource, 201),
        ("operator-1", "operator", "admin.routing", "model:chest-xray", 200),
        ("reader-1", "reader", "admin.routing", "model:chest-xray", 403),
        ("unauthenticated", None, "view_image", resource, 401),
    ]
    assert events[3]["detail"] == {"shadow": False}
    text = json.dumps(events)
    assert "John" not in text and "MRN" not in text  # feedback comments never reach the audit log


def test_one_request_is_one_audit_row_and_one_count_with_the_status_it_was_answered(
    secured: AppHarness, tokens: dict[str, dict[str, str]]
) -> None:
    """The one request middleware reads the status once for the audit log, the metrics and a 405's Allow."""
    store = secured.service.require_store()

    def count(endpoint: str, status: str) -> float:
        return metric_value(
            secured.request("GET", "/metrics", headers=tokens["operator"]).text,
            "radflow_requests_total",
            endpoint=endpoint,
            status=status,
        )

    denied_before, wrong_before = count("/v1/monitoring", "403"), count("/v1/predict", "405")
    before = audit_events(store, limit=1)[0]["id"] if audit_events(store, limit=1) else 0
    assert secured.request("GET", "/v1/monitoring", headers=tokens["client"]).status_code == 403  # no audit rule
    wrong = secured.request("GET", "/v1/predict", headers=tokens["client"])
    assert wrong.status_code == 405 and wrong.headers["allow"] == "OPTIONS, POST"
    events = [e for e in audit_events(store, limit=20) if e["id"] > before]
    assert [(e["actor"], e["action"], e["resource"], e["status"]) for e in events] == [
        ("client-1", "denied", "GET /v1/monitoring", 403)
    ]
    assert count("/v1/monitoring", "403") - denied_before == 1
    assert count("/v1/predict", "405") - wrong_before == 1


def test_admin_errors_name_the_model_file_not_the_servers_folders(
    onnx_pair: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = tmp_path / "deploy" / "secret-folder" / "model.onnx"
    served.parent.mkdir(parents=True)
    shutil.copy(onnx_pair[0], served)
    harness = AppHarness(_settings(served, tmp_path, auth="tokens"))
    try:
        token, _ = create_token(harness.service.require_store(), "ops", "operator")
        served.write_bytes(b"not an onnx graph")  # the champion's file is damaged on disk: reloading it fails
        with caplog.at_level(logging.WARNING, logger="radflow.serve.admin"):
            failed = harness.request("POST", "/admin/reload", json={}, headers={"Authorization": f"Bearer {token}"})
        error = failed.json()["error"]
        assert failed.status_code == 400 and "model.onnx" in error and "not a readable ONNX model" in error
        assert str(tmp_path) not in error and "secret-folder" not in error
        assert str(served) in caplog.text  # the full error stays in the server's log
        (event,) = audit_events(harness.service.require_store(), action="admin.reload")
        assert event["status"] == 400 and "secret-folder" not in json.dumps(event)
    finally:
        harness.close()


def test_a_sent_model_uri_is_echoed_as_sent() -> None:
    message = "/srv/registry/x/model.onnx: not found; /no/such.onnx is not a file"
    assert redact_paths(message, keep=["/no/such.onnx"]) == "model.onnx: not found; /no/such.onnx is not a file"
    assert redact_paths("no model in sqlite:////var/lib/radflow/mlflow.db") == "no model in mlflow.db"
    for kept in ("models:/chest-xray@champion", "runs:/abc/model", "GET /v1/predict", "1/2"):
        assert redact_paths(kept) == kept


# -- tokens -------------------------------------------------------------------------------------------


def test_only_a_salted_digest_of_a_token_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "serving.db"
    with Store(f"sqlite:///{db}") as store:
        token, record = create_token(store, "alice", "reader")
        again, _ = create_token(store, "alice", "reader")
    secret = token.split("_", 2)[2]
    assert token.startswith(f"rf_{record['id']}_") and token != again
    assert secret.encode() not in db.read_bytes() and "salt" not in record and "digest" not in record


def test_a_revoked_token_is_refused_once_the_cache_lapses(tmp_path: Path) -> None:
    now = [0.0]
    with Store(f"sqlite:///{tmp_path / 'serving.db'}") as store:
        token, record = create_token(store, "kiosk", "client")
        auth = Authenticator("tokens", tokens=TokenVerifier(lambda: store), clock=lambda: now[0])
        identity = auth.authenticate(token)
        assert (identity.name, identity.role, identity.via) == ("kiosk", "client", "token")
        revoke_tokens(store, "kiosk")
        assert auth.cached(token) == identity  # within CACHE_S
        now[0] += 6
        assert auth.cached(token) is None
        with pytest.raises(AuthenticationError, match=f"{record['id']} was revoked"):
            auth.authenticate(token)
        with pytest.raises(AuthenticationError, match="unknown API token"):
            auth.authenticate(token[:-4] + "AAAA")


def test_unknown_roles_are_refused_with_a_hint(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'serving.db'}") as store, pytest.raises(ConfigError, match="'operator'"):
        create_token(store, "x", "operater")


def test_token_cli_creates_lists_revokes_and_audits(tmp_path: Path) -> None:
    from radflow.cli import app

    url = f"sqlite:///{tmp_path / 'serving.db'}"
    runner = CliRunner()
    made = runner.invoke(app, ["token", "create", "--role", "operator", "--name", "ci", "--store-url", url, "--json"])
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    assert created["token"].startswith("rf_") and created["role"] == "operator"
    listed = json.loads(runner.invoke(app, ["token", "list", "--store-url", url, "--json"]).stdout)
    assert [(t["id"], t["name"]) for t in listed] == [(created["id"], "ci")] and "token" not in listed[0]
    assert runner.invoke(app, ["token", "revoke", "ci", "--store-url", url]).exit_code == 0
    assert json.loads(runner.invoke(app, ["token", "list", "--store-url", url, "--json"]).stdout) == []
    missing = runner.invoke(app, ["token", "revoke", "ci", "--store-url", url])
    assert missing.exit_code == 2 and "no active token" in missing.output
    events = json.loads(runner.invoke(app, ["audit", "--store-url", url, "--json"]).stdout)
    assert [e["action"] for e in events] == ["token.revoke", "token.create"]
    assert events[0]["actor"].startswith("cli") and events[0]["resource"] == f"token:{created['id']}"


# -- modes --------------------------------------------------------------------------------------------


def test_radflow_serve_requires_tokens_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADFLOW_AUTH", raising=False)
    assert ServeConfig().auth == "tokens" and ServeSettings().auth == "tokens"
    from radflow.cli import app

    seen: list[ServeSettings] = []
    monkeypatch.setattr("radflow.serve.server.run_server", lambda settings, **_kw: seen.append(settings))
    for flags, mode in (([], "tokens"), (["--no-auth"], "off")):
        result = CliRunner().invoke(app, ["serve", "--model", "m.onnx", *flags])
        assert result.exit_code == 0, result.output
        assert seen[-1].auth == mode


def test_with_auth_off_the_server_warns_and_only_admin_needs_the_admin_token(
    onnx_pair: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="radflow.serve.auth"):
        harness = AppHarness(_settings(onnx_pair[0], tmp_path, auth="off"))
    try:
        assert "AUTHENTICATION IS OFF" in caplog.text
        assert harness.request("GET", "/v1/ui/recent").status_code == 200
        assert harness.request("GET", "/admin/routing").status_code == 404  # no admin token: admin is disabled
    finally:
        harness.close()


def test_auth_oidc_without_its_issuer_is_a_config_error(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="oidc_issuer, oidc_audience, oidc_jwks"):
        AppHarness(_settings(onnx_pair[0], tmp_path, auth="oidc"))


# -- OIDC ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A local RSA key standing in for the identity provider, and its JWKS file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path_factory.mktemp("idp") / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return key, jwks


def _jwt(key: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u-1",
        "preferred_username": "dr.kim",
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": ["radiologist", "offline_access"]},
        **claims,
    }
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers={"kid": "k1"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    """The algorithm-confusion forgery: an HMAC keyed with the (public) verification key."""
    signing_input = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()) + "."
    signing_input += _b64(json.dumps(claims).encode())
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def _unsigned(claims: dict[str, Any]) -> str:
    return _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(claims).encode()) + "."


def _verifier(jwks: Path) -> OidcVerifier:
    return OidcVerifier(
        ISSUER, AUDIENCE, str(jwks), roles_claim="realm_access.roles", role_map={"radiologist": "reader"}, leeway_s=0
    )


def test_oidc_tokens_are_checked_for_signature_issuer_audience_and_lifetime(issuer_key: tuple[Any, Path]) -> None:
    key, jwks = issuer_key
    verifier = _verifier(jwks)
    identity = verifier.verify(_jwt(key))
    assert (identity.name, identity.role, identity.via) == ("dr.kim", "reader", "oidc")
    now = int(time.time())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "realm_access": {"roles": ["operator"]}}
    bad = {
        "expired": _jwt(key, exp=now - 10),
        "not yet valid": _jwt(key, nbf=now + 600),
        "another audience": _jwt(key, aud="someone-else"),
        "another issuer": _jwt(key, iss="https://evil.example"),
        "no expiry": _jwt(key, exp=None),
        "another key": _jwt(other),
        "HS256 keyed with the public JWKS": _hs256(forged, jwks.read_bytes()),
        "alg none": _unsigned(forged),
    }
    for why, token in bad.items():
        with pytest.raises(AuthenticationError, match="invalid OIDC token"):
            verifier.verify(token)
            pytest.fail(f"accepted a token with {why}")
    nobody = verifier.verify(_jwt(key, realm_access={"roles": ["offline_access"]}))
    assert nobody.role is None and not nobody.allows("predict")
    assert verifier.verify(_jwt(key, realm_access={"roles": ["radiologist", "operator"]})).role == "operator"


def test_oidc_refuses_symmetric_algorithms(issuer_key: tuple[Any, Path]) -> None:
    with pytest.raises(ConfigError, match="asymmetric"):
        OidcVerifier(ISSUER, AUDIENCE, str(issuer_key[1]), algorithms=["HS256"])
    with pytest.raises(ConfigError, match="neither an https URL nor a JWKS file"):
        OidcVerifier(ISSUER, AUDIENCE, "/no/jwks.json")


def test_the_server_takes_oidc_bearer_tokens_and_api_tokens(
    onnx_pair: tuple[Path, Path], tmp_path: Path, issuer_key: tuple[Any, Path]
) -> None:
    key, jwks = issuer_key
    settings = _settings(
        onnx_pair[0],
        tmp_path,
        auth="oidc",
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks=str(jwks),
        oidc_roles_claim="realm_access.roles",
        oidc_role_map={"radiologist": "reader"},
    )
    harness = AppHarness(settings)
    try:
        store = harness.service.require_store()
        bearer = {"Authorization": f"Bearer {_jwt(key)}"}
        assert harness.request("GET", "/v1/ui/recent", headers=bearer).status_code == 200
        assert harness.request("GET", "/v1/monitoring", headers=bearer).status_code == 403
        expired = harness.request("GET", "/v1/ui/recent", headers={"Authorization": f"Bearer {_jwt(key, exp=1)}"})
        assert expired.status_code == 401 and "expired" in expired.json()["error"]
        roleless = {"Authorization": f"Bearer {_jwt(key, realm_access={'roles': []})}"}
        refused = harness.request("GET", "/v1/ui/recent", headers=roleless)
        assert refused.status_code == 403 and "no radflow role" in refused.json()["error"]
        api_token = {"Authorization": f"Bearer {create_token(store, 'pacs', 'client')[0]}"}
        assert harness.request("GET", "/v2", headers=api_token).status_code == 200
        actors = {(e["actor"], e["via"], e["status"]) for e in audit_events(store, action="list_recent")}
        assert ("dr.kim", "oidc", 200) in actors
    finally:
        harness.close()
