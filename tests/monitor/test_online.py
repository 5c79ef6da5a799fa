"""Online evaluation against a real SQLite store: metrics from feedback, shadow pairing, the window, the rule."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radflow.errors import ConfigError
from radflow.monitor.autorule import AutoRule, decide
from radflow.monitor.online import online_report
from radflow.store import PredictionRecord, Store, labelled_predictions

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(url=f"sqlite:///{tmp_path}/s.db")
    yield s
    s.close()


def findings(probs: dict[str, float], threshold: float = 0.5) -> dict[str, Any]:
    return {
        "findings": [
            {"label": k, "probability": p, "positive": p >= threshold, "threshold": threshold} for k, p in probs.items()
        ]
    }


class Clinic:
    """Logs predictions as the service does (answered row, optional shadow row per request) with a clock."""

    def __init__(self, store: Store):
        self.store = store
        self.tick = 0

    def log(self, outputs: dict[str, Any], *, version: str = "1", arm: str = "champion", shadow: bool = False,
            request_id: str | None = None) -> str:  # fmt: skip
        self.tick += 1
        record = PredictionRecord(
            model_name="chest",
            model_version=version,
            model_alias=arm,
            arm=arm,
            outputs=outputs,
            shadow=shadow,
            request_id=request_id or str(uuid.uuid4()),
            created_at=T0 + timedelta(seconds=self.tick),
        )
        self.store.log(record)
        return record.id

    def request(self, answered: dict[str, Any], shadow: dict[str, Any] | None = None) -> str:
        """One request answered by champion v1, scored in the background by challenger v2; the answered id."""
        rid = str(uuid.uuid4())
        pid = self.log(answered, request_id=rid)
        if shadow is not None:
            self.log(shadow, version="2", arm="challenger", shadow=True, request_id=rid)
        return pid


def model(report: dict[str, Any], version: str = "1", shadow: bool = False) -> dict[str, Any]:
    (entry,) = [m for m in report["models"] if m["version"] == version and m["shadow"] == shadow]
    return entry


def scores(rng: np.random.Generator, y: np.ndarray, separation: float) -> np.ndarray:
    return np.round(1 / (1 + np.exp(-(separation * (y - 0.5) + rng.normal(size=y.size)))), 6)


def test_known_auroc_sensitivity_specificity_and_single_class_reason(store: Store) -> None:
    clinic = Clinic(store)
    for a, truth in zip([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], strict=True):
        pid = clinic.request(findings({"Effusion": a, "Mass": 0.2}))
        store.add_feedback(pid, labels={"Effusion": truth, "Mass": 0})
    report = online_report(store, n_bootstrap=100)
    clf = model(report)["classification"]
    effusion, mass = clf["per_label"]["Effusion"], clf["per_label"]["Mass"]
    assert effusion["auroc"] == pytest.approx(0.75)
    # At threshold 0.5 only 0.8 is called positive: 1 of 2 positives found, both negatives cleared.
    assert effusion["sensitivity"] == 0.5 and effusion["specificity"] == 1.0 and effusion["threshold"] == 0.5
    assert effusion["confusion"] == {"tp": 1, "fp": 0, "fn": 1, "tn": 2}
    assert mass["auroc"] is None and mass["auroc_ci"] is None
    assert "no positive cases among 4" in mass["reason"]
    assert clf["macro"]["auroc"] == pytest.approx(0.75) and clf["macro"]["labels_skipped"] == ["Mass"]
    assert clf["label_judgements"] == 8 and clf["label_agreements"] == 7  # one missed Effusion
    assert model(report)["verdicts"] is None and model(report)["regression"] is None
    assert report["comparison"] is None, "no challenger, nothing to compare"


def test_latest_feedback_per_prediction_wins(store: Store) -> None:
    clinic = Clinic(store)
    low, high = clinic.request(findings({"Effusion": 0.2})), clinic.request(findings({"Effusion": 0.9}))
    store.add_feedback(low, labels={"Effusion": 0})
    store.add_feedback(high, labels={"Effusion": 1}, correct=True)
    assert model(online_report(store))["classification"]["macro"]["auroc"] == 1.0
    store.add_feedback(low, labels={"Effusion": 1})  # the readers change their minds
    store.add_feedback(high, labels={"Effusion": 0}, correct=False)
    report = online_report(store)
    assert model(report)["classification"]["macro"]["auroc"] == 0.0
    assert model(report)["verdicts"] == {"n": 1, "correct": 0, "accuracy": 0.0, "accuracy_ci": [0.0, 0.0]}
    assert report["n_feedback"] == 2


def test_confidence_interval_contains_the_estimate_and_narrows_with_more_feedback(store: Store) -> None:
    rng = np.random.default_rng(1)
    clinic = Clinic(store)
    y = (rng.random(400) < 0.4).astype(int)
    ids = [clinic.request(findings({"Effusion": float(p)})) for p in scores(rng, y, 1.0)]  # AUROC ~0.75
    for pid, truth in zip(ids, y, strict=True):  # logged first, so each feedback waits for no write
        store.add_feedback(pid, labels={"Effusion": int(truth)})
    widths = []
    for window in (40, 400):
        entry = model(online_report(store, window=window))
        clf = entry["classification"]
        assert entry["n"] == window
        for point, (lo, hi) in [
            (clf["macro"]["auroc"], clf["macro"]["auroc_ci"]),
            (clf["macro"]["sensitivity"], clf["macro"]["sensitivity_ci"]),
            (clf["macro"]["specificity"], clf["macro"]["specificity_ci"]),
        ]:
            assert lo <= point <= hi
        widths.append(clf["macro"]["auroc_ci"][1] - clf["macro"]["auroc_ci"][0])
    assert widths[1] < widths[0] / 2, widths  # ~1/sqrt(10) in theory


def test_window_slides_over_the_most_recent_predictions(store: Store) -> None:
    clinic = Clinic(store)
    for verdict in [True] * 5 + [False] * 5:
        store.add_feedback(clinic.request(findings({"Effusion": 0.3})), correct=verdict)
    assert model(online_report(store, window=5))["verdicts"]["accuracy"] == 0.0
    assert model(online_report(store, window=10))["verdicts"]["accuracy"] == 0.5
    for _ in range(5):
        store.add_feedback(clinic.request(findings({"Effusion": 0.3})), correct=True)
    report = online_report(store, window=5)
    assert model(report)["verdicts"] == {"n": 5, "correct": 5, "accuracy": 1.0, "accuracy_ci": [1.0, 1.0]}
    assert report["window"] == 5
    with pytest.raises(ConfigError, match="window"):
        online_report(store, window=0)


def _shadow_traffic(store: Store, n: int, champion_sep: float, challenger_sep: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    clinic = Clinic(store)
    y = (rng.random(n) < 0.5).astype(int)
    a, b = scores(rng, y, champion_sep), scores(rng, y, challenger_sep)
    ids = [
        clinic.request(findings({"Effusion": float(pa)}), findings({"Effusion": float(pb)}))
        for pa, pb in zip(a, b, strict=True)
    ]
    for pid, truth, pa in zip(ids, y, a, strict=True):
        store.add_feedback(pid, labels={"Effusion": int(truth)}, correct=bool(truth == (pa >= 0.5)))


def test_shadow_rows_inherit_the_requests_truth_and_are_compared_paired(store: Store) -> None:
    _shadow_traffic(store, 200, champion_sep=1.0, challenger_sep=4.0)
    report = online_report(store)
    shadow = model(report, "2", shadow=True)
    assert shadow["arm"] == "challenger" and shadow["n"] == 200 and shadow["n_inherited"] == 200
    assert shadow["verdicts"] is None, "a verdict judged the champion's answer, not the shadow's"
    assert report["n_feedback"] == 200
    comp = report["comparison"]
    assert comp["mode"] == "shadow" and comp["paired"] and comp["n"] == 200 and comp["reason"] is None
    auroc = comp["metrics"]["macro_auroc"]
    assert auroc["champion"] == model(report)["classification"]["macro"]["auroc"]
    assert auroc["challenger"] == shadow["classification"]["macro"]["auroc"]
    assert auroc["difference"] == pytest.approx(auroc["challenger"] - auroc["champion"], abs=1e-6)
    lo, hi = auroc["difference_ci"]
    assert 0 < lo <= auroc["difference"] <= hi and auroc["favours"] == "challenger"
    assert "accuracy" not in comp["metrics"]

    promote = decide(report, AutoRule(enabled=True, min_feedback=100))
    assert promote is not None and promote["action"] == "promote"
    assert "paired requests" in promote["reason"] and "v2" in promote["reason"]
    assert decide(report, AutoRule()) is None, "the rule is off by default"
    assert decide(report, AutoRule(enabled=True, min_feedback=201)) is None, "not enough feedback yet"
    assert decide(report, AutoRule(enabled=True, min_feedback=100, margin=1.0)) is None
    assert decide(report, AutoRule(enabled=True, min_feedback=100), challenger_version="2") == promote
    assert decide(report, AutoRule(enabled=True, min_feedback=100), challenger_version="3") is None, "stale evidence"


def test_a_challenger_no_better_is_not_promoted(store: Store) -> None:
    _shadow_traffic(store, 200, champion_sep=2.0, challenger_sep=2.0, seed=3)
    report = online_report(store)
    auroc = report["comparison"]["metrics"]["macro_auroc"]
    lo, hi = auroc["difference_ci"]
    assert lo < 0 < hi and auroc["favours"] is None
    assert decide(report, AutoRule(enabled=True, min_feedback=100)) is None
    # Worse, but only in shadow: no answer is affected, so nothing is rolled back.
    worse = Store(url=store.url.replace("s.db", "worse.db"))
    try:
        _shadow_traffic(worse, 200, champion_sep=4.0, challenger_sep=0.5)
        report = online_report(worse)
        assert report["comparison"]["metrics"]["macro_auroc"]["favours"] == "champion"
        assert decide(report, AutoRule(enabled=True, min_feedback=100)) is None
    finally:
        worse.close()


def test_a_clearly_worse_canary_is_rolled_back_unpaired(store: Store) -> None:
    rng = np.random.default_rng(5)
    clinic = Clinic(store)
    for arm, version, sep in (("champion", "1", 4.0), ("challenger", "2", 0.3)):
        y = (rng.random(150) < 0.5).astype(int)
        p = scores(rng, y, sep)
        ids = [clinic.log(findings({"Effusion": float(x)}), version=version, arm=arm) for x in p]
        for pid, truth, x in zip(ids, y, p, strict=True):
            store.add_feedback(pid, labels={"Effusion": int(truth)}, correct=bool(truth == (x >= 0.5)))
    report = online_report(store)
    comp = report["comparison"]
    assert comp["mode"] == "canary" and not comp["paired"] and comp["n"] is None
    assert comp["metrics"]["macro_auroc"]["n_champion"] == comp["metrics"]["macro_auroc"]["n_challenger"] == 150
    assert comp["metrics"]["macro_auroc"]["favours"] == "champion"
    assert comp["metrics"]["accuracy"]["favours"] == "champion"
    rollback = decide(report, AutoRule(enabled=True, min_feedback=100))
    assert rollback is not None and rollback["action"] == "rollback" and "per arm" in rollback["reason"]
    assert decide(report, AutoRule(enabled=True, min_feedback=100, rollback=False)) is None
    assert decide(report, AutoRule(enabled=False, min_feedback=1)) is None


def test_regression_mae_and_paired_mae_difference(store: Store) -> None:
    clinic = Clinic(store)
    rng = np.random.default_rng(2)
    truth = rng.uniform(20, 200, 120)
    champion = truth + rng.normal(0, 20, truth.size)
    challenger = truth + rng.normal(0, 5, truth.size)
    ids = [
        clinic.request(
            {"prediction": {"value": round(float(a), 4), "unit": "months"}},
            {"prediction": {"value": round(float(b), 4), "unit": "months"}},
        )
        for a, b in zip(champion, challenger, strict=True)
    ]
    for pid, t in zip(ids, truth, strict=True):
        store.add_feedback(pid, value=float(t))
    report = online_report(store)
    reg = model(report)["regression"]
    assert model(report)["task"] == "regression" and model(report)["classification"] is None
    assert reg["n"] == 120 and reg["mae"] == pytest.approx(np.mean(np.abs(champion - truth)), abs=1e-3)
    assert reg["mae_ci"][0] <= reg["mae"] <= reg["mae_ci"][1]
    mae = report["comparison"]["metrics"]["mae"]
    assert mae["higher_is_better"] is False and mae["difference"] < 0 and mae["favours"] == "challenger"
    assert mae["challenger"] == model(report, "2", shadow=True)["regression"]["mae"]
    promote = decide(report, AutoRule(enabled=True, min_feedback=100))
    assert promote is not None and promote["action"] == "promote" and "mae" in promote["reason"]


def test_small_regression_case_exact(store: Store) -> None:
    clinic = Clinic(store)
    for pred, truth in ((10.0, 12.0), (20.0, 20.0), (30.0, 27.0)):
        store.add_feedback(clinic.request({"prediction": {"value": pred, "unit": "months"}}), value=truth)
    reg = model(online_report(store))["regression"]
    assert reg["mae"] == pytest.approx(5 / 3, abs=1e-6) and reg["bias"] == pytest.approx(1 / 3, abs=1e-6)


def test_shadow_rows_without_feedback_on_their_request_are_left_out(store: Store) -> None:
    clinic = Clinic(store)
    labelled = clinic.request(findings({"Effusion": 0.9}), findings({"Effusion": 0.7}))
    clinic.request(findings({"Effusion": 0.1}), findings({"Effusion": 0.2}))
    store.add_feedback(labelled, labels={"Effusion": 1})
    rows = labelled_predictions(store)
    assert len(rows) == 2 and {r.inherited for r in rows} == {False, True}
    assert all(r.labels == {"Effusion": 1} for r in rows)
    assert [r.key.shadow for r in labelled_predictions(store, siblings=False)] == [False]


def test_auto_rule_checks_its_settings() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'macro_auroc'"):
        AutoRule(metric="macro_aurc")
    with pytest.raises(ConfigError, match="min_feedback"):
        AutoRule(min_feedback=0)
    with pytest.raises(ConfigError, match="margin"):
        AutoRule(margin=-0.1)


def test_after_promotion_the_old_challenger_rows_are_not_compared_with_themselves(store: Store) -> None:
    clinic = Clinic(store)
    ids = [clinic.log(findings({"Effusion": p}), arm="champion") for p in (0.2, 0.8)]
    ids += [clinic.log(findings({"Effusion": p}), version="2", arm="challenger") for p in (0.1, 0.9)]
    ids += [clinic.log(findings({"Effusion": p}), version="2", arm="champion") for p in (0.3, 0.7)]  # promoted
    for pid, truth in zip(ids, [0, 1] * 3, strict=True):
        store.add_feedback(pid, labels={"Effusion": truth})
    report = online_report(store)
    comp = report["comparison"]
    assert comp["champion"]["version"] == "2" and "now the champion" in comp["reason"]
    assert decide(report, AutoRule(enabled=True, min_feedback=1)) is None
    groups = [(m["version"], m["arm"]) for m in report["models"]]
    assert groups == [("1", "champion"), ("2", "challenger"), ("2", "champion")]
