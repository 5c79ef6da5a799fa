"""The store's tables (SQLAlchemy Core) at the newest schema version, and the one place times are made UTC.

:data:`SCHEMA_VERSION` names the schema these tables describe; :mod:`radflow.store.migrations` brings an
older database up to it. A change to a table here needs a migration there (a test compares a migrated
database with a fresh one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
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
)

__all__ = [
    "ALERTS",
    "FEEDBACK",
    "PREDICTIONS",
    "SCHEMA_VERSION",
    "SCHEMA_VERSIONS",
    "iso_utc",
    "metadata",
    "public",
    "utc",
]

SCHEMA_VERSION = 2
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
    # v2: the online window ranks each model version's predictions by time.
    Index("ix_predictions_model_created_at", "model_name", "model_version", "arm", "shadow", "created_at"),
)
"""One row per model answer (the served one and any shadow scoring of the same request)."""

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
