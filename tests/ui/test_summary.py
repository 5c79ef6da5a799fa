"""The dashboard's numbers: quantiles from histogram buckets, the metrics snapshot (inference traffic only) and
online accuracy per model version."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from radflow.inference.metrics import ServiceMetrics
from radflow.store import PredictionRecord, Store
from radflow.ui.summary import feedback_stats, histogram_quantile, metrics_snapshot


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.1)
    assert histogram_quantile(buckets, 0.75) == pytest.approx(0.15)
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.05)


def test_histogram_quantile_beyond_the_last_bound_and_without_data() -> None:
    assert histogram_quantile([(0.1, 0.0), (1.0, 1.0), (math.inf, 10.0)], 0.95) == 1.0
    assert histogram_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5) is None
    assert histogram_quantile([], 0.5) is None


def test_snapshot_counts_inference_requests_not_ui_polling() -> None:
    m = ServiceMetrics()
    for _ in range(3):
        m.requests.labels("/v1/predict", "chest", "1", "champion", "200").inc()
        m.latency.labels("/v1/predict", "chest", "1", "champion").observe(0.02)
    m.requests.labels("/v1/predict", "chest", "2", "challenger", "200").inc()
    m.latency.labels("/v1/predict", "chest", "2", "challenger").observe(0.2)
    m.requests.labels("/v1/predict", "", "", "", "422").inc()
    m.requests.labels("/v2/models/{model_name}/infer", "chest", "1", "champion", "200").inc()
    for _ in range(50):  # the dashboard polling itself must not look like traffic
        m.requests.labels("/v1/ui/summary", "", "", "", "200").inc()
        m.latency.labels("/v1/ui/summary", "", "", "").observe(5.0)
    observe = m.batch_observer("chest", "1")
    observe(4, [0.0] * 4, 0.01)
    observe(2, [0.0] * 2, 0.01)
    m.rejected.labels("overload").inc(2)

    snap = metrics_snapshot(m.render().decode())
    assert snap["requests"] == 6
    assert snap["errors"] == 1
    assert snap["by_arm"] == {"champion": 4, "challenger": 1}
    assert snap["mean_batch_size"] == pytest.approx(3.0)
    assert snap["batches"] == 2
    assert snap["rejected"] == {"overload": 2}
    assert 10 < snap["latency_p50_ms"] < 25  # 3 of 4 answers took 20 ms; the 5 s UI polls are not counted
    assert snap["latency_buckets"][-1] == [None, 4.0]  # +Inf travels as null (valid JSON)


def test_snapshot_of_an_idle_server() -> None:
    snap = metrics_snapshot(ServiceMetrics().render().decode())
    assert snap["requests"] == 0
    assert snap["latency_p50_ms"] is None and snap["mean_batch_size"] is None
    assert snap["rejected"] == {}


def test_feedback_stats_counts_answered_predictions_per_arm_not_shadow_rows(tmp_path: Path) -> None:
    store = Store(url=f"sqlite:///{tmp_path}/s.db")
    try:

        def log(arm: str, version: str, value: float, shadow: bool = False, request_id: str | None = None) -> str:
            record = PredictionRecord(
                model_name="hand",
                model_version=version,
                model_alias=arm,
                arm=arm,
                outputs={"prediction": {"value": value, "unit": "months"}},
                shadow=shadow,
                request_id=request_id,
            )
            store.log(record)
            return record.id

        answered = [log("champion", "1", v, request_id=f"r{v}") for v in (100.0, 120.0)]
        for v in (100.0, 120.0):  # the shadow's rows share the requests; the dashboard shows answers only
            log("challenger", "2", v + 50, shadow=True, request_id=f"r{v}")
        canary = log("challenger", "2", 90.0)
        store.add_feedback(answered[0], value=110.0, correct=True)
        store.add_feedback(answered[1], value=124.0)
        store.add_feedback(canary, value=80.0, correct=False)

        rows = {(r["version"], r["arm"]): r for r in feedback_stats(store)}
        assert set(rows) == {("1", "champion"), ("2", "challenger")}
        champion, challenger = rows[("1", "champion")], rows[("2", "challenger")]
        assert champion["predictions"] == 2 and champion["with_feedback"] == 2
        assert champion["mae"] == pytest.approx(7.0) and champion["accuracy"] == 1.0 and champion["verdicts"] == 1
        assert challenger["predictions"] == 1 and challenger["with_feedback"] == 1
        assert challenger["mae"] == pytest.approx(10.0) and challenger["accuracy"] == 0.0
        assert champion["auroc"] is None and champion["label_agreement"] is None
    finally:
        store.close()
