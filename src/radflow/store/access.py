"""Access-control records in the store: API tokens (salted digests, never secrets) and the audit log.

The policy (roles, how secrets are hashed, who may call what) belongs to :mod:`radflow.auth`; this
module only reads and writes rows. The audit log has an append and a read here and nothing else,
and the database refuses UPDATE and DELETE on it (triggers installed with the table, see
:func:`radflow.store.schema.append_only`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, or_, select, update

from radflow.store.schema import API_TOKENS, AUDIT_LOG, iso_utc, public

if TYPE_CHECKING:
    from radflow.store.store import Store

__all__ = ["add_token", "append_audit", "audit_events", "get_token", "list_tokens", "revoke_tokens"]

_LISTED = [c for c in API_TOKENS.columns if c.name not in ("salt", "digest")]


def _token_row(row: Any) -> dict[str, Any]:
    out = public(row)
    out["revoked_at"] = iso_utc(out.get("revoked_at"))
    return out


def add_token(store: Store, *, token_id: str, name: str, role: str, salt: str, digest: str) -> dict[str, Any]:
    """Commit a new token record; returns it without its salt and digest."""
    row = {
        "id": token_id,
        "name": name,
        "role": role,
        "salt": salt,
        "digest": digest,
        "created_at": datetime.now(UTC),
        "revoked_at": None,
    }
    with store.engine.begin() as conn:
        conn.execute(insert(API_TOKENS), row)
    return _token_row({k: v for k, v in row.items() if k not in ("salt", "digest")})


def get_token(store: Store, token_id: str) -> dict[str, Any] | None:
    """The full record of token ``token_id`` (salt and digest included, for verification), or None."""
    with store.engine.connect() as conn:
        row = conn.execute(select(API_TOKENS).where(API_TOKENS.c.id == token_id)).mappings().first()
    return None if row is None else _token_row(dict(row))


def list_tokens(store: Store, include_revoked: bool = False) -> list[dict[str, Any]]:
    """Token records, oldest first, without salts and digests."""
    query = select(*_LISTED).order_by(API_TOKENS.c.created_at, API_TOKENS.c.id)
    if not include_revoked:
        query = query.where(API_TOKENS.c.revoked_at.is_(None))
    with store.engine.connect() as conn:
        return [_token_row(dict(r)) for r in conn.execute(query).mappings()]


def revoke_tokens(store: Store, id_or_name: str) -> list[dict[str, Any]]:
    """Revoke the active token with this id, or every active token with this name; returns those revoked."""
    match = or_(API_TOKENS.c.id == id_or_name, API_TOKENS.c.name == id_or_name)
    active = API_TOKENS.c.revoked_at.is_(None)
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(select(*_LISTED).where(match, active)).mappings()]
        by_id = [r for r in rows if r["id"] == id_or_name]
        chosen = by_id or rows
        if chosen:
            ids = [r["id"] for r in chosen]
            conn.execute(update(API_TOKENS).where(API_TOKENS.c.id.in_(ids)).values(revoked_at=now))
    return [_token_row({**r, "revoked_at": now}) for r in chosen]


def append_audit(
    store: Store,
    actor: str,
    action: str,
    *,
    via: str,
    role: str | None = None,
    resource: str | None = None,
    status: int | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Commit one audit event (durable when this returns). Callers pass identities and ids, never PHI."""
    row = {
        "created_at": datetime.now(UTC),
        "actor": actor[:200],
        "role": role,
        "via": via,
        "action": action,
        "resource": None if resource is None else resource[:200],
        "status": status,
        "detail": detail,
    }
    with store.engine.begin() as conn:
        row["id"] = int(conn.execute(insert(AUDIT_LOG).returning(AUDIT_LOG.c.id), row).scalar_one())
    return public(row)


def audit_events(
    store: Store, limit: int = 100, actor: str | None = None, action: str | None = None
) -> list[dict[str, Any]]:
    """Audit events, newest first, optionally for one actor or one action."""
    query = select(AUDIT_LOG).order_by(AUDIT_LOG.c.id.desc()).limit(limit)
    if actor is not None:
        query = query.where(AUDIT_LOG.c.actor == actor)
    if action is not None:
        query = query.where(AUDIT_LOG.c.action == action)
    with store.engine.connect() as conn:
        return [public(dict(r)) for r in conn.execute(query).mappings()]
