"""Schema versions: a serving.db written before the store was versioned opens, migrates and keeps every row."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from radflow.errors import NotFoundError
from radflow.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaVersionError,
    Store,
    labelled_predictions,
    recent_predictions,
)

FIXTURE = Path(__file__).parent / "fixtures" / "serving-v0.db"
"""Made by ``fixtures/make_serving_v0.py`` with the store of commit 95594cf (see there for its rows)."""
PID = "00000000-0000-4000-8000-{:012d}".format


@pytest.fixture()
def v0(tmp_path: Path) -> Path:
    path = tmp_path / "serving.db"
    shutil.copy(FIXTURE, path)
    return path


@pytest.fixture()
def migrated(v0: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{v0}") as store:
        yield store


def _versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [v for (v,) in conn.execute("SELECT version FROM radflow_schema ORDER BY version")]


def test_the_fixture_is_unversioned() -> None:
    with sqlite3.connect(FIXTURE) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"predictions", "feedback", "alerts"}


def test_v0_store_migrates_to_the_current_version_and_keeps_every_row(migrated: Store, v0: Path) -> None:
    assert (migrated.schema_migrated_from, migrated.schema_version) == (0, SCHEMA_VERSION)
    assert _versions(v0) == [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))

    predictions = migrated.predictions()
    assert sorted(p["id"] for p in predictions) == [PID(i) for i in range(1, 7)]
    shadow = migrated.get_prediction(PID(3))
    assert (shadow["shadow"], shadow["arm"], shadow["model_version"]) == (True, "challenger", "2")
    assert shadow["created_at"] == "2025-01-06T09:03:00+00:00"
    assert migrated.get_prediction(PID(5))["outputs"] == {"prediction": {"value": 120.5, "unit": "months"}}

    feedback = migrated.feedback()
    assert [(f["id"], f["prediction_id"]) for f in feedback] == [
        (1, PID(1)),
        (2, PID(2)),
        (3, PID(2)),
        (4, PID(4)),
        (5, PID(5)),
    ]
    assert feedback[2]["labels"] == {"Cardiomegaly": 0, "Effusion": 1}
    assert feedback[2]["created_at"] == "2025-01-06T21:00:00+00:00"
    assert (feedback[4]["value"], feedback[4]["reader"]) == (118.0, "reader-c")

    (alert,) = migrated.alerts()
    assert (alert["kind"], alert["feature"], alert["score"], alert["details"]) == (
        "drift",
        "output:Effusion",
        0.31,
        {"window": 6},
    )


def test_migrated_rows_answer_the_new_queries(migrated: Store) -> None:
    rows = {r.id: r for r in labelled_predictions(migrated)}
    assert set(rows) == {PID(1), PID(2), PID(3), PID(4), PID(5)}  # 6 has no feedback
    corrected = rows[PID(2)]  # two feedback rows: the later correction counts
    assert (corrected.feedback_id, corrected.n_feedback) == (3, 2)
    assert (corrected.labels, corrected.correct) == ({"Cardiomegaly": 0, "Effusion": 1}, True)
    shadow = rows[PID(3)]  # the challenger's shadow row of request 2 inherits its labels, not its verdict
    assert (shadow.inherited, shadow.labels, shadow.correct, shadow.feedback_id) == (True, corrected.labels, None, 3)
    assert rows[PID(4)].input_sha256 is None
    assert rows[PID(5)].value == 118.0
    assert rows[PID(1)].created_at == datetime(2025, 1, 6, 9, 1, tzinfo=UTC)

    since = labelled_predictions(migrated, since=datetime(2025, 1, 6, 21, 30, tzinfo=UTC), siblings=False)
    assert [r.id for r in since] == [PID(4), PID(5)]
    # The same instant written in another zone selects the same rows (SQLite compares stored UTC text).
    plus_two = datetime(2025, 1, 6, 23, 30, tzinfo=timezone(timedelta(hours=2)))
    assert [r.id for r in labelled_predictions(migrated, since=plus_two, siblings=False)] == [PID(4), PID(5)]

    recent = recent_predictions(migrated, limit=10)
    assert [r["id"] for r in recent] == [PID(i) for i in (6, 5, 4, 2, 1)]  # shadow rows are not answers
    assert recent[0]["feedback"] is None
    assert (recent[3]["feedback"]["count"], recent[3]["feedback"]["reader"]) == (2, "reader-b")


def _triggers(url: str) -> list[tuple[str, str]]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return sorted(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'").fetchall())


def test_a_migrated_store_has_the_schema_of_a_new_one(migrated: Store, tmp_path: Path) -> None:
    def shape(url: str) -> dict[str, object]:
        engine = create_engine(url)
        try:
            insp = inspect(engine)
            return {
                table: (
                    [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
                    sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)),
                )
                for table in sorted(insp.get_table_names())
            } | {"triggers": _triggers(url)}
        finally:
            engine.dispose()

    with Store(f"sqlite:///{tmp_path / 'new.db'}"):
        pass
    assert shape(migrated.url) == shape(f"sqlite:///{tmp_path / 'new.db'}")


def test_reopening_migrates_nothing(v0: Path) -> None:
    with Store(f"sqlite:///{v0}"):
        pass
    with Store(f"sqlite:///{v0}") as again:
        assert (again.schema_migrated_from, again.schema_version) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert _versions(v0) == list(range(1, SCHEMA_VERSION + 1))


def test_a_new_store_starts_at_the_current_version(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'fresh.db'}") as store:
        assert (store.schema_migrated_from, store.schema_version) == (None, SCHEMA_VERSION)
    assert _versions(tmp_path / "fresh.db") == [SCHEMA_VERSION]


def test_workers_opening_one_old_store_at_once_all_succeed(v0: Path) -> None:
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(f"sqlite:///{v0}").close()
        except BaseException as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _versions(v0) == list(range(1, SCHEMA_VERSION + 1))


def test_a_store_from_a_newer_radflow_is_refused_and_left_alone(v0: Path) -> None:
    with Store(f"sqlite:///{v0}"):
        pass
    with sqlite3.connect(v0) as conn:
        conn.execute("INSERT INTO radflow_schema VALUES (99, '2030-01-01 00:00:00', 'from the future')")
    newer = rf"schema version 99, newer than this radflow knows \({SCHEMA_VERSION}\); upgrade radflow"
    with pytest.raises(SchemaVersionError, match=newer):
        Store(f"sqlite:///{v0}")
    assert _versions(v0)[-1] == 99


def test_readers_do_not_create_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "serving.db"
    with pytest.raises(NotFoundError, match="no prediction store at"):
        Store(f"sqlite:///{missing}", create=False)
    assert not missing.parent.exists()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER)")
    with pytest.raises(NotFoundError, match="not a radflow prediction store"):
        Store(f"sqlite:///{other}", create=False)
