"""Drift math on known cases, the ring buffer, and alerts raised once per threshold crossing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from radflow.monitor.drift import (
    DriftMonitor,
    DriftThresholds,
    DriftTracker,
    RingBuffer,
    embedding_distance,
    ks_test,
    psi,
    psi_counts,
)
from radflow.monitor.reference import INPUT_FEATURES, EmbeddingProfile, NumericProfile, Reference


def test_psi_of_a_known_shift() -> None:
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)  # (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5)
    assert psi_counts([0.5, 0.5], [25, 75]) == pytest.approx(expected)
    assert psi_counts([0.2, 0.3, 0.5], [20, 30, 50]) == pytest.approx(0.0, abs=1e-12)
    assert psi_counts([0.5, 0.5], [75, 25]) == pytest.approx(expected), "PSI is symmetric in the two shares"


def test_psi_over_reference_bins_separates_same_from_shifted() -> None:
    rng = np.random.default_rng(0)
    prof = NumericProfile.from_values(rng.normal(0, 1, 5000))
    assert len(prof.probs) == len(prof.edges) + 1 == 10
    assert sum(prof.probs) == pytest.approx(1.0)
    same = psi(prof.edges, prof.probs, rng.normal(0, 1, 5000))
    shifted = psi(prof.edges, prof.probs, rng.normal(0.5, 1, 5000))
    assert same < 0.02
    assert shifted > 0.2


def test_psi_refuses_mismatched_bins() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psi_counts([0.5, 0.5], [1, 2, 3])


def test_ks_matches_scipy_and_known_extremes() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 200)
    stat, pvalue = ks_test(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert (stat, pvalue) == pytest.approx((ref.statistic, ref.pvalue))
    assert ks_test(a, a)[0] == pytest.approx(0.0)
    assert ks_test([0.0, 0.1, 0.2], [1.0, 1.1])[0] == pytest.approx(1.0), "disjoint samples: the CDFs differ by 1"


def test_embedding_distance_is_in_reference_stds() -> None:
    mean, std = np.zeros(4), np.array([1.0, 2.0, 0.5, 1.0])
    assert embedding_distance(mean, std, np.tile(std, (10, 1))) == pytest.approx(1.0)
    assert embedding_distance(mean, std, np.tile(mean, (10, 1))) == pytest.approx(0.0)
    # A dimension that never varied in the reference is skipped rather than dividing by zero.
    assert embedding_distance([0.0, 5.0], [1.0, 0.0], np.array([[2.0, 9.0]])) == pytest.approx(2.0)


def test_ring_buffer_keeps_the_newest_rows_oldest_first() -> None:
    buf = RingBuffer(3, 1)
    for v in range(5):
        buf.append(np.array([float(v)]))
    assert buf.count == 3
    assert buf.values().ravel().tolist() == [2.0, 3.0, 4.0]


def _reference(rng: np.random.Generator, with_embedding: bool = True) -> Reference:
    numeric = {name: NumericProfile.from_values(rng.normal(0.5, 0.1, 2000)) for name in INPUT_FEATURES}
    numeric["score:A"] = NumericProfile.from_values(rng.uniform(0, 1, 2000))
    groups = {**dict.fromkeys(INPUT_FEATURES, "input"), "score:A": "output"}
    emb = EmbeddingProfile("embedding", [0.0, 0.0], [1.0, 1.0], 2000) if with_embedding else None
    return Reference(
        model={"labels": ["A"], "task": "multilabel"},
        numeric=numeric,
        groups=groups,
        embedding=emb,
        categorical={"view": {"frontal": 1.0}},
    )


def _feed(monitor: DriftMonitor, rng: np.random.Generator, n: int, shift: float = 0.0) -> None:
    for _ in range(n):
        monitor.observe(
            rng.normal(0.5 + shift, 0.1, len(INPUT_FEATURES)),
            rng.uniform(0, 1, 1),
            rng.normal(shift * 10, 1, 2),
            view="",
        )


def test_monitor_collects_then_scores_and_alerts_once_per_crossing() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor("m", "1", _reference(rng), thresholds=DriftThresholds(min_window=200), capacity=300)
    _feed(monitor, rng, 150)
    report, raised = monitor.evaluate()
    assert report["status"] == "collecting" and report["window"]["size"] == 150 and raised == []

    _feed(monitor, rng, 150)
    report, raised = monitor.evaluate()
    assert report["status"] == "ok", [s for s in report["scores"] if s["alert"]]
    assert raised == []
    stats_seen = {(s["feature"], s["statistic"]) for s in report["scores"]}
    assert {("intensity_mean", "psi"), ("intensity_mean", "ks"), ("score:A", "ks"), ("embedding", "mean_distance")} <= (
        stats_seen
    )
    assert ("view", "psi") not in stats_seen, "unknown views (PNG uploads) are not scored against the reference"

    _feed(monitor, rng, 300, shift=0.1)
    report, raised = monitor.evaluate()
    assert report["status"] == "alert"
    assert len(raised) == 1, "one shift is one event: one alert, whatever the number of statistics it moved"
    (event,) = raised
    crossed = {(c["feature"], c["statistic"]) for c in event.crossings}
    assert crossed == {(s["feature"], s["statistic"]) for s in report["scores"] if s["alert"]}
    assert ("intensity_mean", "psi") in crossed and ("embedding", "mean_distance") in crossed
    assert ("score:A", "psi") not in crossed, "the outputs did not move"
    assert all(c["score"] >= c["threshold"] for c in event.crossings)
    assert event.features[0] == event.feature == "intensity_mean" and event.statistic == "psi"
    assert len(event.features) == len(set(event.features)) >= 5 and "score:A" not in event.features
    assert all(name in event.message for name in event.features)
    assert event.message.startswith(f"m v1: drift in {len(event.features)} features over the last 300 predictions")
    assert event.details == {"window": 300, "features": event.features, "crossings": event.crossings}
    assert event.to_dict()["features"] == event.features

    again, raised_again = monitor.evaluate()
    assert again["status"] == "alert" and raised_again == [], "a standing crossing is not alerted twice"
    _feed(monitor, rng, 300, shift=0.2)  # the same event growing is not a new one
    assert monitor.evaluate()[1] == []

    _feed(monitor, rng, 300)  # back to normal: re-armed
    report, raised = monitor.evaluate()
    assert report["status"] == "ok" and raised == []
    _feed(monitor, rng, 300, shift=0.1)
    _, raised = monitor.evaluate()
    assert len(raised) == 1 and ("intensity_mean", "psi") in {
        (c["feature"], c["statistic"]) for c in raised[0].crossings
    }


def test_the_group_rearms_only_when_every_statistic_is_back_below_rearm() -> None:
    rng = np.random.default_rng(5)
    monitor = DriftMonitor("m", "1", _reference(rng), thresholds=DriftThresholds(min_window=200), capacity=300)
    _feed(monitor, rng, 300, shift=0.1)
    assert len(monitor.evaluate()[1]) == 1
    # inputs back to normal, but the embedding still far off: the event has not ended
    for _ in range(300):
        monitor.observe(rng.normal(0.5, 0.1, len(INPUT_FEATURES)), rng.uniform(0, 1, 1), rng.normal(1.0, 1, 2))
    report, raised = monitor.evaluate()
    assert [s["feature"] for s in report["scores"] if s["alert"]] == ["embedding"] and raised == []
    _feed(monitor, rng, 300, shift=0.1)  # the inputs shift again within the same event: no second alert
    assert monitor.evaluate()[1] == []


def test_psi_sees_a_shift_off_a_value_most_reference_images_share() -> None:
    """The served case: intensity_p05 is 0 on most reference images; a brighter border moves it off 0.

    Merged decile edges left one bin [0, inf) for every value, so PSI was 0.0 while KS was 0.786.
    """
    levels = np.arange(1, 11) / 255.0
    reference = np.concatenate([np.zeros(950), np.repeat(levels[:5], 10)])  # 95% black at the 5th percentile
    live = np.concatenate([np.zeros(82), np.resize(levels, 418)])  # 16.4% still 0, the rest one to ten levels up
    old_edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)[1:-1]))
    old_probs = np.bincount(np.searchsorted(old_edges, reference, side="right"), minlength=len(old_edges) + 1)
    assert psi(old_edges, old_probs / old_probs.sum(), live) == pytest.approx(0.0, abs=1e-9)
    assert ks_test(reference, live)[0] == pytest.approx(0.786)

    prof = NumericProfile.from_values(reference)
    assert prof.edges[:2] == [0.0, float(np.nextafter(0.0, 1.0))], "the shared value is a bin of its own"
    assert prof.probs[1] == pytest.approx(0.95)
    assert psi(prof.edges, prof.probs, live) > 1.0 > DriftThresholds().psi
    assert psi(prof.edges, prof.probs, reference) == pytest.approx(0.0, abs=1e-9)
    again = NumericProfile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert again.edges == prof.edges, "the edge just above 0 survives reference.json"


def test_monitor_without_reference_counts_and_says_why() -> None:
    monitor = DriftMonitor("m", "2", None, reason="no reference.json beside model.onnx")
    monitor.observe(np.zeros(5), np.zeros(1), None)
    report, raised = monitor.evaluate()
    assert report["status"] == "no_reference" and "reference.json" in report["reason"]
    assert report["observed"] == 1 and raised == []


def test_observations_of_the_wrong_width_are_ignored() -> None:
    monitor = DriftMonitor("m", "1", _reference(np.random.default_rng(3)), thresholds=DriftThresholds(min_window=10))
    monitor.observe(np.zeros(5), np.zeros(4), None)  # four outputs for a one-label model
    assert monitor.evaluate()[0]["window"]["size"] == 0


def test_tracker_keeps_one_window_per_version() -> None:
    tracker = DriftTracker(DriftThresholds(min_window=10), capacity=50)
    ref = _reference(np.random.default_rng(4))
    a = tracker.register("m", "1", ref)
    assert tracker.register("m", "1", ref) is a, "a reload of the same version keeps its window"
    tracker.register("m", "2", None, "missing")
    reports, _ = tracker.evaluate()
    assert set(reports) == {"m/1", "m/2"}
    assert reports["m/2"]["status"] == "no_reference"


def test_undefined_output_values_are_left_out_not_scored_as_a_shift() -> None:
    """A segmentation confidence is NaN on an image whose mask is empty; the reference left those out too."""
    rng = np.random.default_rng(5)
    monitor = DriftMonitor("m", "1", _reference(rng, with_embedding=False), thresholds=DriftThresholds(min_window=100))
    for i in range(300):
        score = np.nan if i % 2 else rng.uniform(0, 1)  # half the window undefined, the rest as in the reference
        monitor.observe(rng.normal(0.5, 0.1, len(INPUT_FEATURES)), np.array([score]), None, view="")
    report, raised = monitor.evaluate()
    scores = {(s["feature"], s["statistic"]): s for s in report["scores"]}
    assert math.isfinite(scores[("score:A", "ks")]["score"]) and scores[("score:A", "ks")]["live_mean"] is not None
    assert not scores[("score:A", "psi")]["alert"] and not scores[("score:A", "ks")]["alert"]
    assert raised == []
