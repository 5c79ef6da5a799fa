"""Who may call radflow: roles, API tokens, OIDC bearer tokens, the identity every door records.

Transport-free, so every door (HTTP today; the Kafka worker and DICOM gateway next) authenticates
the same way and writes the same audit identities; :mod:`radflow.serve.auth` is the HTTP binding.

Roles are cumulative: ``client`` may score images (``predict``); ``reader`` also views predictions,
stored inputs and heatmaps (``view``) and gives feedback (``feedback``); ``operator`` also sees the
dashboard, monitoring and metrics (``monitor``) and changes routing, reloads, promotes and rolls
back (``admin``).

API tokens are ``rf_<id>_<secret>``: the id finds the record, the secret is 256 random bits. Only a
salted SHA-256 of the secret is stored. A slow hash (scrypt, bcrypt) protects guessable passwords;
for a random 256-bit secret a fast one is as safe and keeps the check off the request's latency.
A revoked token stops working within :data:`CACHE_S` seconds (verified tokens are cached that long).

OIDC access tokens (JWT, asymmetric signatures only) are checked against the configured issuer's
JWKS: signature, ``iss``, ``aud``, ``exp`` and ``nbf``; a configured claim maps to roles.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from radflow.errors import ConfigError, RadflowError

if TYPE_CHECKING:
    from radflow.store import Store

__all__ = [
    "CACHE_S",
    "PERMISSIONS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "TOKEN_PREFIX",
    "AuthenticationError",
    "Authenticator",
    "Identity",
    "OidcVerifier",
    "Permission",
    "PermissionDeniedError",
    "Role",
    "TokenVerifier",
    "create_token",
    "redact_paths",
    "roles_allowing",
]

Role = Literal["client", "reader", "operator"]
Permission = Literal["predict", "view", "feedback", "monitor", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
PERMISSIONS: tuple[Permission, ...] = get_args(Permission)
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    "client": frozenset({"predict"}),
    "reader": frozenset({"predict", "view", "feedback"}),
    "operator": frozenset(PERMISSIONS),
}
"""What each role may do (cumulative: each role holds the one before it)."""

_WHAT: dict[Permission, str] = {
    "predict": "score images",
    "view": "view predictions and stored images",
    "feedback": "give feedback",
    "monitor": "see the dashboard, monitoring and metrics",
    "admin": "change routing or models",
}
TOKEN_PREFIX = "rf_"
CACHE_S = 5.0
"""Seconds a verified credential is trusted without another look (a revocation takes at most this long)."""
_TOKEN_RE = re.compile(r"^rf_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")
_REALM = 'Bearer realm="radflow"'


def roles_allowing(permission: Permission) -> list[Role]:
    return [r for r in ROLES if permission in ROLE_PERMISSIONS[r]]


class AuthenticationError(RadflowError):
    """No credentials, or ones that are unknown, revoked, expired or badly signed (401 + WWW-Authenticate)."""

    status_code = 401

    def __init__(self, msg: str, invalid_token: bool = False):
        super().__init__(msg)
        challenge = _REALM + (', error="invalid_token"' if invalid_token else "")
        self.headers = {"WWW-Authenticate": challenge}


class PermissionDeniedError(RadflowError):
    """Valid credentials whose role does not allow the action (403)."""

    status_code = 403


@dataclass(frozen=True)
class Identity:
    """Who is calling: ``name`` is what the audit log records (a token's name, an OIDC user, ``anonymous``)."""

    name: str
    role: Role | None
    via: Literal["token", "oidc", "admin_token", "anonymous", "cli"]

    def allows(self, permission: Permission) -> bool:
        return self.role is not None and permission in ROLE_PERMISSIONS[self.role]

    def require(self, permission: Permission) -> None:
        """PermissionDeniedError naming the roles that would do, unless this identity may ``permission``."""
        if self.allows(permission):
            return
        needs = " or ".join(roles_allowing(permission))
        held = f"role {self.role}" if self.role else "no radflow role"
        raise PermissionDeniedError(f"{self.name} ({held}) may not {_WHAT[permission]}; that needs role {needs}.")


ANONYMOUS = Identity("anonymous", None, "anonymous")


# -- API tokens ------------------------------------------------------------------------------------


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def _check_role(role: str) -> Role:
    if role not in ROLES:
        from radflow.errors import did_you_mean

        raise ConfigError(f"unknown role {role!r}; choose from {', '.join(ROLES)}.{did_you_mean(role, ROLES)}")
    checked: Role = role
    return checked


def create_token(store: Store, name: str, role: str) -> tuple[str, dict[str, Any]]:
    """A new API token for ``name`` with ``role``: (the token, shown once and never stored; its record)."""
    from radflow.store import add_token

    checked = _check_role(role)
    name = name.strip()
    if not name or len(name) > 200:
        raise ConfigError("a token needs a --name of 1 to 200 characters (who or what uses it).")
    token_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    record = add_token(store, token_id=token_id, name=name, role=checked, salt=salt, digest=_digest(salt, secret))
    return f"{TOKEN_PREFIX}{token_id}_{secret}", record


class TokenVerifier:
    """Checks radflow API tokens against the store's records (``store`` is called when a lookup is needed)."""

    def __init__(self, store: Callable[[], Store]):
        self._store = store

    def verify(self, token: str) -> Identity:
        from radflow.store import get_token

        match = _TOKEN_RE.match(token)
        if match is None:
            raise AuthenticationError("not a radflow API token (they look like rf_<id>_<secret>).", True)
        token_id, secret = match.groups()
        record = get_token(self._store(), token_id)
        if record is None or not hmac.compare_digest(_digest(record["salt"], secret), record["digest"]):
            raise AuthenticationError("unknown API token.", True)
        if record["revoked_at"] is not None:
            raise AuthenticationError(f"the API token {token_id} was revoked.", True)
        return Identity(record["name"], record["role"], "token")


# -- OIDC ------------------------------------------------------------------------------------------

_ASYMMETRIC = re.compile(r"^(RS|PS|ES)(256|384|512)$|^EdDSA$")


class OidcVerifier:
    """Validates OIDC access tokens (JWT) of one issuer: signature against its JWKS, iss, aud, exp, nbf."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: str,
        *,
        roles_claim: str = "roles",
        role_map: dict[str, Role] | None = None,
        name_claim: str = "preferred_username",
        algorithms: Iterable[str] = ("RS256",),
        leeway_s: float = 30.0,
    ):
        import jwt

        self.algorithms = list(algorithms)
        weak = [a for a in self.algorithms if not _ASYMMETRIC.match(a)]
        if weak or not self.algorithms:
            raise ConfigError(
                f"oidc_algorithms {weak or self.algorithms} are not accepted; give asymmetric ones such as RS256 "
                "(the server holds no issuer secret, and 'none' or HS* would let anyone sign tokens)."
            )
        self.issuer, self.audience = issuer, audience
        self.roles_claim, self.name_claim, self.leeway_s = roles_claim, name_claim, leeway_s
        self.role_map: dict[str, Role] = {r: r for r in ROLES} | dict(role_map or {})
        self._jwks_source = jwks
        self._lock = threading.Lock()
        self._file_keys: tuple[float, Any] | None = None
        self._client: Any = None
        if jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(jwks, cache_jwk_set=True, lifespan=300, timeout=10)
        elif not Path(jwks).is_file():
            raise ConfigError(f"oidc_jwks {jwks!r} is neither an https URL nor a JWKS file.")

    def _key(self, token: str) -> Any:
        import jwt

        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        path = Path(self._jwks_source)
        with self._lock:
            mtime = path.stat().st_mtime
            if self._file_keys is None or self._file_keys[0] != mtime:  # a rotated key file is re-read
                self._file_keys = (mtime, jwt.PyJWKSet.from_json(path.read_text()))
            keys = self._file_keys[1]
        for key in keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise jwt.PyJWKError(f"no key with kid {kid!r} in the issuer's JWKS")

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; AuthenticationError saying what is wrong with it."""
        import jwt

        try:
            decoded: dict[str, Any] = jwt.decode(
                token,
                self._key(token),
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthenticationError(f"invalid OIDC token: {exc}.", True) from None
        return decoded

    def _claim(self, claims: dict[str, Any], dotted: str) -> Any:
        value: Any = claims
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def verify(self, token: str) -> Identity:
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Identity, float]:
        """The caller of ``token`` and until when (Unix time, leeway included) the token holds."""
        claims = self.claims(token)
        raw = self._claim(claims, self.roles_claim)
        values = [raw] if isinstance(raw, str) else [v for v in raw or () if isinstance(v, str)]
        granted = {self.role_map[v] for v in values if v in self.role_map}
        role = max(granted, key=ROLES.index) if granted else None
        name = self._claim(claims, self.name_claim) or claims.get("sub") or "oidc-user"
        return Identity(str(name)[:200], role, "oidc"), float(claims["exp"]) + self.leeway_s


# -- the authenticator -------------------------------------------------------------------------------


class Authenticator:
    """Turns a bearer credential into an :class:`Identity`: the admin token, an API token or an OIDC token.

    ``mode`` is ``tokens`` or ``oidc`` (``off`` never authenticates: the caller decides what is open).
    The admin token, when set, stays an operator credential. Verified credentials are cached for
    :data:`CACHE_S` seconds (never past a JWT's ``exp``), so a request rarely waits on the store.
    """

    def __init__(
        self,
        mode: Literal["off", "tokens", "oidc"],
        tokens: TokenVerifier | None = None,
        oidc: OidcVerifier | None = None,
        admin_token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if mode == "oidc" and oidc is None:
            raise ConfigError("auth: oidc needs oidc_issuer, oidc_audience and oidc_jwks.")
        self.mode, self.tokens, self.oidc = mode, tokens, oidc
        self.admin_token = admin_token or None
        self._clock = clock
        self._cache: dict[str, tuple[float, Identity]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def _kinds(self) -> str:
        return "a radflow API token or an OIDC access token" if self.oidc else "a radflow API token"

    def bearer(self, authorization: str | None) -> str:
        """The credential of an ``Authorization: Bearer ...`` header; AuthenticationError without one.

        ``Basic base64(user:token)`` carries the token as its password, for clients that can send only
        HTTP Basic (Label Studio's calls to an ML backend); the user name is ignored.
        """
        scheme, _, credential = (authorization or "").strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "basic" and credential:
            import base64
            import binascii

            try:
                credential = base64.b64decode(credential, validate=True).decode("utf-8").partition(":")[2].strip()
            except (binascii.Error, UnicodeDecodeError):
                credential = ""
        elif scheme.lower() != "bearer":
            credential = ""
        if not credential:
            kinds = self._kinds() if self.enabled else "the admin token (RADFLOW_ADMIN_TOKEN)"
            raise AuthenticationError(
                f"this server needs 'Authorization: Bearer <token>' (or HTTP Basic with the token as the password) "
                f"with {kinds}."
            )
        return credential

    def cached(self, credential: str) -> Identity | None:
        """The identity of a credential verified in the last few seconds (no I/O), else None."""
        key = hashlib.sha256(credential.encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        return None

    def authenticate(self, credential: str) -> Identity:
        """The caller behind ``credential`` (may read the store or fetch the issuer's keys: run it off the loop)."""
        if self.admin_token is not None and hmac.compare_digest(credential.encode(), self.admin_token.encode()):
            return Identity("admin-token", "operator", "admin_token")
        if not self.enabled:
            raise AuthenticationError("wrong admin token.", True)
        expires = self._clock() + CACHE_S
        if credential.startswith(TOKEN_PREFIX) and self.tokens is not None:
            identity = self.tokens.verify(credential)
        elif self.oidc is not None and credential.count(".") == 2:
            identity, exp = self.oidc.verify_until(credential)
            expires = min(expires, self._clock() + exp - time.time())
        else:
            raise AuthenticationError(f"unknown credential; send {self._kinds()}.", True)
        key = hashlib.sha256(credential.encode()).hexdigest()
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (expires, identity)
        return identity


# -- what a caller may be told ------------------------------------------------------------------------

_URL_PATH = re.compile(r"\b(?:sqlite|file):/{2,}[^\s'\"`,;)\]}>]+")
_ABS_PATH = re.compile(
    r"(?<![\w.:/\\~-])(?!/(?:v1|v2|admin|ui)/)(?:[A-Za-z]:)?(?:[/\\][^\s'\"`,;:()\[\]{}<>/\\]+){2,}[/\\]?"
)  # the server's own routes (/v1/..., /admin/...) are not paths to hide


def _basename(match: re.Match[str]) -> str:
    tail = re.split(r"[/\\]", match.group(0).rstrip("/\\"))[-1]
    return tail or "(path)"


def redact_paths(message: str, keep: Iterable[str | None] = ()) -> str:
    """``message`` with absolute server paths (and ``sqlite:``/``file:`` URLs) cut to their last part.

    Error answers name the model file or database a caller can recognise, not where it lives on the
    server; what the caller sent itself (``keep``, e.g. the model URI of a reload) is left as sent.
    """
    kept = sorted({k for k in keep if k}, key=len, reverse=True)
    for i, text in enumerate(kept):
        message = message.replace(text, f"\x00{i}\x00")
    message = _ABS_PATH.sub(_basename, _URL_PATH.sub(_basename, message))
    for i, text in enumerate(kept):
        message = message.replace(f"\x00{i}\x00", text)
    return message
