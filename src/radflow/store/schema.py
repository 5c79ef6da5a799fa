"""The store's tables (SQLAlchemy Core) at the newest schema version, and the one place times are made UTC.

:data:`SCHEMA_VERSION` names the schema these tables describe; :mod:`radflow.store.migrations` brings an
older database up to it. A change to a table here needs a migration there (a test compares a migrated
database with a fresh one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.engine import Connection

__all__ = [
    "ALERTS",
    "API_TOKENS",
    "AUDIT_LOG",
    "FEEDBACK",
    "PREDICTIONS",
    "SCHEMA_VERSION",
    "SCHEMA_VERSIONS",
    "append_only",
    "iso_utc",
    "metadata",
    "public",
    "utc",
]

SCHEMA_VERSION = 6
"""The schema version this radflow writes; a database at a higher version is refused."""

metadata = MetaData()

PREDICTIONS = Table(
    "predictions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(50), nullable=False),
    Column("model_alias", String(50)),
    Column("arm", String(20), nullable=False),
    Column("shadow", Boolean, nullable=False, default=False),
    Column("request_id", String(36), index=True),
    Column("input_sha256", String(64), index=True),
    Column("input_format", String(10)),
    Column("outputs", JSON, nullable=False),
    Column("latency_ms", Float),
    # v4: sha256 of the request's routing key (a caller's hashed study id), never the key itself: feedback
    # export refuses films of held-out patients and studies by it (radflow.feedback.HeldOutScreen).
    Column("study_key", String(64)),
    # v5: the DICOM Modality of the input (CR, DX, ...; empty for PNG/JPEG): the worklist filters on it.
    Column("modality", String(16)),
    # v6: a workflow step's answer (radflow.workflow): the workflow and step names; the request_id links the steps.
    Column("workflow", String(200)),
    Column("step", String(100)),
    # v2: the online window ranks each model version's predictions by time.
    Index("ix_predictions_model_created_at", "model_name", "model_version", "arm", "shadow", "created_at"),
)
"""One row per model answer (the served one and any shadow scoring of the same request; one per model step of a
workflow answer, one per crop for a model run on crops, tagged ``workflow`` and ``step``)."""

FEEDBACK = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prediction_id", String(36), ForeignKey("predictions.id"), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),  # v2 index: ``since``
    Column("labels", JSON),
    Column("value", Float),
    Column("correct", Boolean),
    Column("reader", String(200)),
    Column("comment", Text),
)
"""Readers' answers; a prediction may have several, and the latest (highest id) is the one that counts."""

ALERTS = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(20), nullable=False),
    Column("model_name", String(200)),
    Column("model_version", String(50)),
    Column("feature", String(200)),
    Column("statistic", String(50)),
    Column("score", Float),
    Column("threshold", Float),
    Column("message", Text, nullable=False),
    Column("details", JSON),
)
"""Monitoring events: ``drift`` (a statistic crossed its threshold) and ``auto_rule`` (a promotion/rollback)."""

API_TOKENS = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("role", String(20), nullable=False),
    Column("salt", String(64), nullable=False),
    Column("digest", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)
"""v3: API tokens (``radflow token create``): the public id and a salted digest of the secret, never the secret."""

AUDIT_LOG = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(200), nullable=False),
    Column("role", String(20)),
    Column("via", String(20), nullable=False),
    Column("action", String(50), nullable=False),
    Column("resource", String(200)),
    Column("status", Integer),
    Column("detail", JSON),
)
"""v3: who viewed or changed what (staff identities, prediction ids, model versions; no PHI). Append-only:
triggers refuse UPDATE and DELETE (:func:`append_only`)."""

_APPEND_ONLY_MESSAGE = "the audit log is append-only"
_SQLITE_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
    for verb in ("UPDATE", "DELETE")
)
_POSTGRES_TRIGGERS = (
    "CREATE OR REPLACE FUNCTION radflow_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}'; END $$",
    "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION radflow_audit_append_only()",
    "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION radflow_audit_append_only()",
)


def append_only(conn: Connection) -> None:
    """Install (idempotently) the triggers that make ``audit_log`` refuse UPDATE, DELETE (and TRUNCATE).

    In the database rather than in code, so no radflow process, script or SQL shell edits history
    without first dropping a trigger, which itself needs the table owner's rights.
    """
    statements = {"sqlite": _SQLITE_TRIGGERS, "postgresql": _POSTGRES_TRIGGERS}.get(conn.dialect.name, ())
    for statement in statements:
        conn.execute(DDL(statement))


# Every way the table comes to exist (create_all on a new store, the v3 migration) gets the triggers.
event.listen(AUDIT_LOG, "after_create", lambda _table, connection, **_kw: append_only(connection))

SCHEMA_VERSIONS = Table(
    "radflow_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    Column("description", Text, nullable=False),
)
"""One row per schema version the database went through; the highest is its version."""


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC time. SQLite hands back naive datetimes; the store wrote them in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 with the UTC offset (what JSON answers and the browser need), None for None."""
    return None if value is None else utc(value).isoformat()


def public(row: Any) -> dict[str, Any]:
    """A row as the store's readers get it: a plain dict with ``created_at`` as ISO 8601 UTC."""
    out = dict(row)
    if isinstance(out.get("created_at"), datetime):
        out["created_at"] = iso_utc(out["created_at"])
    return out
