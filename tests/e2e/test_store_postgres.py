"""The prediction log and feedback on a real PostgreSQL server (Debian's), as a team outgrowing SQLite runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radflow.inference import ServeSettings
from radflow.store import Store
from tests.postgres import postgres_server
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from postgres_server()


def test_service_logs_predictions_and_feedback_in_postgresql(
    pg_url: str, onnx_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    app = AppHarness(ServeSettings(model=str(onnx_pair[0]), store_url=pg_url, inputs_dir=tmp_path / "inputs"))
    try:
        ids = []
        for seed in range(3):
            answer = app.request("POST", "/v1/predict", files={"file": ("x.png", png_bytes(seed), "image/png")})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
        saved = app.request("POST", "/v1/feedback", json={"prediction_id": ids[0], "labels": {"Pneumothorax": 1}})
        assert saved.status_code == 201, saved.text
        unknown = app.request("POST", "/v1/feedback", json={"prediction_id": "nope", "correct": True})
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
        # a bad label value is refused before anything is written
        bad = app.request("POST", "/v1/feedback", json={"prediction_id": ids[1], "labels": {"Pneumothorax": 7}})
        assert bad.status_code == 422
    finally:
        app.close()  # flushes the log

    store = Store(pg_url)  # a second connection sees everything the service acknowledged
    try:
        logged = {p["id"]: p for p in store.predictions()}
        assert set(ids) <= set(logged)
        assert logged[ids[0]]["outputs"]["findings"][0]["label"]
        assert logged[ids[0]]["created_at"].endswith("+00:00")  # timestamptz round-trips in UTC
        feedback = store.feedback()
        assert [(f["prediction_id"], f["labels"]) for f in feedback] == [(ids[0], {"Pneumothorax": 1})]
    finally:
        store.close()


def test_an_unversioned_postgresql_store_migrates_and_keeps_its_rows(pg_url: str) -> None:
    from sqlalchemy import text

    from radflow.store import SCHEMA_VERSION, PredictionRecord, labelled_predictions

    with Store(pg_url) as store:
        record = PredictionRecord("chest", "1", "champion", "champion", {"findings": []}, input_sha256="ab" * 32)
        store.log(record)
        store.flush()
        store.add_feedback(record.id, correct=False)
        store.add_feedback(record.id, correct=True)
        # Back to the shape of the unversioned release: no version table, none of the version-2 indexes.
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE radflow_schema"))
            conn.execute(text("DROP INDEX ix_predictions_model_created_at"))
            conn.execute(text("DROP INDEX ix_feedback_created_at"))
    with Store(pg_url) as store:
        assert (store.schema_migrated_from, store.schema_version) == (0, SCHEMA_VERSION)
        (row,) = [r for r in labelled_predictions(store) if r.id == record.id]
        assert (row.correct, row.n_feedback, row.input_sha256) == (True, 2, "ab" * 32)
        assert row.created_at.utcoffset() is not None and row.created_at.utcoffset().total_seconds() == 0


def test_the_audit_log_is_append_only_in_postgresql(pg_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    from radflow.store import append_audit, audit_events

    with Store(pg_url) as store:
        append_audit(store, "reader-1", "view_image", via="token", role="reader", resource="prediction:p", status=200)
        for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(DatabaseError, match="append-only"), store.engine.begin() as conn:
                conn.execute(text(statement))
        assert [e["actor"] for e in audit_events(store, actor="reader-1")] == ["reader-1"]
