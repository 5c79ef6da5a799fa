"""Idempotent prediction writes: inside prediction_id_scope the served row takes the scope's id, once."""

from __future__ import annotations

from pathlib import Path

from radflow.store import PredictionRecord, Store, prediction_id_scope


def _record(shadow: bool = False) -> PredictionRecord:
    return PredictionRecord("m", "1", None, "shadow" if shadow else "champion", {"findings": []}, shadow=shadow)


def test_the_same_id_logged_twice_is_one_row_and_other_rows_of_the_batch_survive(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'serving.db'}", write_window_s=0.05)
    key = "0b6a3f7e-2d1c-4c5e-9f00-1a2b3c4d5e6f"
    try:
        for _ in range(2):  # both queued before either is written: one transaction holds both
            with prediction_id_scope(key):
                store.log(_record())
                store.log(_record(shadow=True))  # a shadow row keeps an id of its own
        other = _record()
        store.log(other)
        assert store.flush()
        with prediction_id_scope(key):  # a redelivery after the first was written
            store.log(_record())
        assert store.flush()
        rows = store.predictions()
    finally:
        store.close()
    served = [r for r in rows if not r["shadow"]]
    assert sorted(r["id"] for r in served) == sorted([key, other.id])
    assert len([r for r in rows if r["shadow"]]) == 2


def test_outside_a_scope_each_record_keeps_its_own_id(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'serving.db'}") as store:
        records = [_record(), _record()]
        for r in records:
            store.log(r)
        store.flush()
        assert {r["id"] for r in store.predictions()} == {r.id for r in records}


def test_postgresql_skips_a_written_id_too() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.dialects import postgresql

    from radflow.store.store import _insert_new

    engine = create_engine("postgresql+psycopg://radflow@127.0.0.1:1/none")  # not connected: the statement only
    sql = str(_insert_new(engine).compile(dialect=postgresql.dialect()))
    assert sql.startswith("INSERT INTO predictions") and sql.endswith("ON CONFLICT (id) DO NOTHING")
