"""Versioned migrations of the store, applied in order when a :class:`~radflow.store.Store` opens.

The version lives in the database (table ``radflow_schema``, one row per version reached). A database
without that table but with radflow's tables was written before the store was versioned (radflow up to
commit 95594cf) and counts as version 0. An empty database gets the newest tables at once.

Why a short list of functions rather than Alembic's script directory: the store migrates itself on open,
inside whichever process opens it first (a server, ``radflow feedback export``, a test), with no
``alembic.ini`` to find and no command to run. Each migration is idempotent (it checks before it
creates), because SQLite under Python's driver commits DDL as it goes: a migration cut short is simply
redone on the next open. Two processes opening one old store at once (a server with several workers)
race; the loser's error is caught and the version read again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, insert, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from radflow.errors import RadflowError
from radflow.store.schema import (
    ALERTS,
    API_TOKENS,
    AUDIT_LOG,
    FEEDBACK,
    PREDICTIONS,
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    append_only,
    metadata,
)

__all__ = ["MIGRATIONS", "Migration", "SchemaVersionError", "migrate", "schema_version"]

log = logging.getLogger(__name__)


class SchemaVersionError(RadflowError):
    """The database was written by a newer radflow (its schema version is above :data:`SCHEMA_VERSION`)."""

    status_code = 500


@dataclass(frozen=True)
class Migration:
    """One step: brings a database at ``version - 1`` to ``version``."""

    version: int
    description: str
    upgrade: Callable[[Connection], None]


def _baseline(conn: Connection) -> None:
    # The unversioned store created whichever of its tables were missing on every open; do the same once.
    for table in (PREDICTIONS, FEEDBACK, ALERTS):
        table.create(conn, checkfirst=True)


def _window_and_since_indexes(conn: Connection) -> None:
    for index in (*PREDICTIONS.indexes, *FEEDBACK.indexes):
        index.create(conn, checkfirst=True)


def _access_control(conn: Connection) -> None:
    for table in (API_TOKENS, AUDIT_LOG):
        table.create(conn, checkfirst=True)
    append_only(conn)  # also when the table survived a cut-short run of this migration without its triggers


def _study_key(conn: Connection) -> None:
    # A store created at v0 or v1 made this column with its tables (the baseline uses today's schema).
    if "study_key" not in {column["name"] for column in inspect(conn).get_columns("predictions")}:
        conn.execute(text("ALTER TABLE predictions ADD COLUMN study_key VARCHAR(64)"))


def _modality(conn: Connection) -> None:
    if "modality" not in {column["name"] for column in inspect(conn).get_columns("predictions")}:
        conn.execute(text("ALTER TABLE predictions ADD COLUMN modality VARCHAR(16)"))


def _workflow_step(conn: Connection) -> None:
    present = {column["name"] for column in inspect(conn).get_columns("predictions")}
    if "workflow" not in present:
        conn.execute(text("ALTER TABLE predictions ADD COLUMN workflow VARCHAR(200)"))
    if "step" not in present:
        conn.execute(text("ALTER TABLE predictions ADD COLUMN step VARCHAR(100)"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "version record on the unversioned schema (predictions, feedback, alerts)", _baseline),
    Migration(2, "indexes for the per-model online window and the feedback `since` filter", _window_and_since_indexes),
    Migration(3, "API tokens (salted digests) and the append-only audit log", _access_control),
    Migration(
        4, "predictions.study_key: a hash of the routing key, to keep held-out studies out of training", _study_key
    ),
    Migration(5, "predictions.modality: the input's DICOM Modality, for the worklist's filter", _modality),
    Migration(6, "predictions.workflow, predictions.step: a workflow step's answer, per step", _workflow_step),
)
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "one migration per version, in order"


def schema_version(conn: Connection) -> int | None:
    """The database's schema version: None for an empty database, 0 for radflow's unversioned tables."""
    tables = set(inspect(conn).get_table_names())
    if SCHEMA_VERSIONS.name in tables:
        version = conn.execute(select(func.max(SCHEMA_VERSIONS.c.version))).scalar_one()
        return 0 if version is None else int(version)
    return 0 if PREDICTIONS.name in tables else None


def _check_known(version: int, url: str) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the prediction store {url} has schema version {version}, newer than this radflow knows "
            f"({SCHEMA_VERSION}); upgrade radflow to open it, or point --store-url at another store."
        )


def _migrate_once(engine: Engine) -> tuple[int | None, int]:
    with engine.begin() as conn:
        found = schema_version(conn)
        now = datetime.now(UTC)
        if found is None:
            metadata.create_all(conn)
            created = {"version": SCHEMA_VERSION, "applied_at": now, "description": "created"}
            conn.execute(insert(SCHEMA_VERSIONS), created)
            return None, SCHEMA_VERSION
        _check_known(found, engine.url.render_as_string(hide_password=True))
        SCHEMA_VERSIONS.create(conn, checkfirst=True)
        for migration in MIGRATIONS[found:]:
            migration.upgrade(conn)
            conn.execute(
                insert(SCHEMA_VERSIONS),
                {"version": migration.version, "applied_at": now, "description": migration.description},
            )
    if found < SCHEMA_VERSION:
        log.info("migrated the prediction store from schema version %d to %d", found, SCHEMA_VERSION)
    return found, SCHEMA_VERSION


def migrate(engine: Engine, attempts: int = 3) -> tuple[int | None, int]:
    """Bring the database at ``engine`` to :data:`SCHEMA_VERSION`; returns (version found, version now).

    The version found is None for an empty database. SchemaVersionError when it is newer than known.
    """
    for _ in range(attempts - 1):
        try:
            return _migrate_once(engine)
        except SQLAlchemyError:
            # Another process may have created or migrated the store between our look and our write.
            with engine.connect() as conn:
                if schema_version(conn) == SCHEMA_VERSION:
                    return SCHEMA_VERSION, SCHEMA_VERSION
    return _migrate_once(engine)
