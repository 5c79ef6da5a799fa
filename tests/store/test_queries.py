"""The store's reads: times come back in UTC, the latest feedback counts, and the package stands alone."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from radflow.errors import ConfigError
from radflow.store import ModelKey, PredictionRecord, Store, labelled_predictions, prediction_counts, recent_predictions

LOCAL = timezone(timedelta(hours=5))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'serving.db'}") as s:
        yield s


def _log(store: Store, when: datetime, **kw: object) -> str:
    record = PredictionRecord(
        model_name="chest", model_version="1", model_alias="champion", arm="champion", outputs={}, created_at=when
    )
    for k, v in kw.items():
        setattr(record, k, v)
    store.log(record)
    return record.id


def test_a_time_written_in_another_zone_reads_back_as_the_same_instant_in_utc(store: Store) -> None:
    pid = _log(store, datetime(2026, 3, 1, 14, 0, tzinfo=LOCAL))
    store.flush()
    assert store.get_prediction(pid)["created_at"] == "2026-03-01T09:00:00+00:00"
    store.add_feedback(pid, correct=True)
    (row,) = labelled_predictions(store)
    assert row.created_at == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert row.created_at.tzinfo is not None and row.feedback_at.tzinfo is not None


def test_the_window_keeps_the_newest_labelled_predictions_of_each_model(store: Store) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [_log(store, t0 + timedelta(minutes=i)) for i in range(5)]
    other = _log(store, t0, model_version="2")
    for pid in [*ids, other]:
        store.add_feedback(pid, correct=False)
    store.add_feedback(ids[0], correct=True)  # a correction on the oldest does not make it recent
    kept = labelled_predictions(store, window=2)
    assert [r.id for r in kept] == [other, ids[3], ids[4]]
    with pytest.raises(ConfigError, match="window must be at least 1"):
        labelled_predictions(store, window=0)


def test_counts_and_recent_predictions_leave_shadow_rows_out_by_default(store: Store) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    answered = _log(store, t0, request_id="r1")
    _log(store, t0, request_id="r1", arm="challenger", model_version="2", shadow=True)
    assert prediction_counts(store) == {ModelKey("chest", "1", "champion", False): 1}
    assert len(prediction_counts(store, include_shadow=True)) == 2
    assert [r["id"] for r in recent_predictions(store)] == [answered]
    assert len(recent_predictions(store, include_shadow=True)) == 2
    with pytest.raises(ConfigError, match="limit must be at least 1"):
        recent_predictions(store, limit=0)


def test_the_store_imports_neither_the_server_nor_its_readers_nor_torch() -> None:
    code = (
        "import sys, radflow.store; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith("
        "('radflow.serve', 'radflow.inference', 'radflow.monitor', 'radflow.ui', 'radflow.feedback'))); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
