"""Metrics against hand-computed and scikit-learn values, and the behaviour of CIs, thresholds and calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from radflow.metrics.metrics import (
    binary_at_threshold,
    choose_threshold,
    choose_thresholds,
    expected_calibration_error,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
    reliability_curve,
    subgroup_metrics,
    weighted_auroc,
)

LABELS = ["a", "b", "c"]


def _scores(n: int, seed: int = 0, n_labels: int = 3, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.3).astype(np.float64)
    logits = signal * (2 * y - 1) + rng.normal(0, 1, y.shape)
    return y, 1 / (1 + np.exp(-logits))


def test_weighted_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.4).astype(float)
    s = np.round(rng.random(300) * 0.6 + 0.3 * y, 1)  # coarse rounding makes many ties
    assert weighted_auroc(y, s, np.ones((1, 300)))[0] == pytest.approx(roc_auc_score(y, s))
    counts = rng.multinomial(300, np.full(300, 1 / 300))
    idx = np.repeat(np.arange(300), counts)
    assert weighted_auroc(y, s, counts[None].astype(float))[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))


def test_multilabel_metrics_match_sklearn() -> None:
    y, s = _scores(400)
    m = multilabel_metrics(y, s, LABELS, {k: 0.5 for k in LABELS}, n_bootstrap=200)
    for j, label in enumerate(LABELS):
        entry = m["per_label"][label]
        assert entry["auroc"] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-6)
        assert entry["auprc"] == pytest.approx(average_precision_score(y[:, j], s[:, j]), abs=1e-6)
        assert entry["prevalence"] == pytest.approx(y[:, j].mean(), abs=1e-6)
    assert m["macro"]["auroc"] == pytest.approx(np.mean([m["per_label"][k]["auroc"] for k in LABELS]), abs=1e-6)
    assert m["micro"]["auroc"] == pytest.approx(roc_auc_score(y.ravel(), s.ravel()), abs=1e-6)


def test_ci_contains_estimate_narrows_with_n_and_is_seeded() -> None:
    widths = []
    for n in (100, 2000):
        y, s = _scores(n, seed=n)
        m = multilabel_metrics(y, s, LABELS, n_bootstrap=300)
        entry = m["per_label"]["a"]
        lo, hi = entry["auroc_ci"]
        assert lo <= entry["auroc"] <= hi
        lo_macro, hi_macro = m["macro"]["auroc_ci"]
        assert lo_macro <= m["macro"]["auroc"] <= hi_macro
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    y, s = _scores(100)
    first = multilabel_metrics(y, s, LABELS, n_bootstrap=100, seed=7)["per_label"]["b"]["auroc_ci"]
    assert multilabel_metrics(y, s, LABELS, n_bootstrap=100, seed=7)["per_label"]["b"]["auroc_ci"] == first


def test_youden_and_target_sensitivity_thresholds_on_a_constructed_case() -> None:
    negatives = [0.1, 0.2, 0.3, 0.5, 0.55]
    positives = [0.4, 0.6, 0.7, 0.8]
    y = np.array([0] * 5 + [1] * 4)
    s = np.array(negatives + positives)
    # t=0.6: sens 3/4, spec 1 -> J 0.75; t=0.4: sens 1, spec 3/5 -> J 0.6.
    assert choose_threshold(y, s, "youden") == pytest.approx(0.6)
    # Sensitivity >= 0.9 needs every positive, so the highest such cut-off is the lowest positive.
    assert choose_threshold(y, s, "sensitivity", target_sensitivity=0.9) == pytest.approx(0.4)
    assert binary_at_threshold(y, s, 0.6) == {
        "sensitivity": 0.75,
        "specificity": 1.0,
        "ppv": 1.0,
        "npv": pytest.approx(5 / 6, abs=1e-6),
        "f1": pytest.approx(6 / 7, abs=1e-6),
        "confusion": {"tp": 3, "fp": 0, "fn": 1, "tn": 5},
    }


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_target_sensitivity_threshold_reaches_the_target(target: float) -> None:
    y, s = _scores(500, seed=11)
    t = choose_threshold(y[:, 0], s[:, 0], "sensitivity", target)
    assert t is not None
    assert binary_at_threshold(y[:, 0], s[:, 0], t)["sensitivity"] >= target
    # ... and it is the highest such threshold: the next score above it falls short.
    above = np.min(s[:, 0][s[:, 0] > t])
    assert binary_at_threshold(y[:, 0], s[:, 0], above)["sensitivity"] < target


def test_thresholds_fall_back_when_val_lacks_a_class() -> None:
    y, s = _scores(100)
    y[:, 2] = 0
    chosen = choose_thresholds(y, s, LABELS, fallback={"c": 0.7})
    assert chosen["a"]["source"] == "val (youden)"
    assert chosen["c"] == {"n": 100, "threshold": 0.7, "source": "checkpoint (val lacks a class)"}
    assert choose_thresholds(y, s, LABELS)["c"]["threshold"] == 0.5


def test_ece_of_calibrated_and_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    assert expected_calibration_error(y, overconfident) > 0.2
    # Hand case: two bins, each off by 0.2.
    assert expected_calibration_error(np.array([0, 0, 1, 1]), np.array([0.2, 0.2, 0.8, 0.8])) == pytest.approx(0.2)
    curve = reliability_curve(np.array([0, 0, 1, 1]), np.array([0.2, 0.2, 0.8, 0.8]), bins=5)
    assert [b["n"] for b in curve] == [0, 2, 0, 0, 2]
    assert curve[1]["mean_predicted"] == pytest.approx(0.2) and curve[1]["observed"] == 0.0


def test_nan_labels_are_ignored_per_label() -> None:
    y, s = _scores(300, seed=5)
    with_nan = y.copy()
    drop = np.arange(300) % 4 == 0
    with_nan[drop, 1] = np.nan
    m = multilabel_metrics(with_nan, s, LABELS, n_bootstrap=0)
    b = m["per_label"]["b"]
    assert b["n"] == 300 - drop.sum()
    assert b["auroc"] == pytest.approx(roc_auc_score(y[~drop, 1], s[~drop, 1]), abs=1e-6)
    assert m["per_label"]["a"]["n"] == 300  # other labels keep every image


def test_single_class_label_is_null_with_a_reason() -> None:
    y, s = _scores(200)
    y[:, 1] = 0
    y[:, 2] = np.nan
    m = multilabel_metrics(y, s, LABELS, {k: 0.5 for k in LABELS}, n_bootstrap=50)
    assert m["per_label"]["b"]["auroc"] is None and m["per_label"]["b"]["auroc_ci"] is None
    assert "no positive cases among 200 images" in m["per_label"]["b"]["reason"]
    assert "no images with a known value" in m["per_label"]["c"]["reason"]
    assert m["macro"]["auroc"] == m["per_label"]["a"]["auroc"]
    assert m["macro"]["labels_skipped"] == ["b", "c"]
    # Binary metrics still make sense without positives: specificity is defined, sensitivity is not.
    assert m["per_label"]["b"]["sensitivity"] is None and m["per_label"]["b"]["specificity"] is not None


def test_subgroups_by_sex_age_band_and_projection() -> None:
    y, s = _scores(240, seed=9)
    manifest = pd.DataFrame(
        {
            "sex": np.array(["M", "F", ""])[np.arange(240) % 3],
            "age": np.where(np.arange(240) % 10 == 0, np.nan, np.arange(240) % 90),
            "projection": np.array(["AP", "PA", "LL", ""])[np.arange(240) % 4],
        }
    )
    groups = subgroup_metrics(y, s, LABELS, manifest, [0, 40, 60, 80, 200])
    assert sorted(groups["sex"]) == ["F", "M"]  # unknown sex left out
    assert sorted(groups["projection"]) == ["AP", "PA"]  # lateral and unknown left out
    assert list(groups["age_band"]) == ["0-40", "40-60", "60-80", "80-200"]
    male = manifest["sex"].to_numpy() == "M"
    entry = groups["sex"]["M"]
    assert entry["n"] == male.sum()
    assert entry["per_label"]["a"]["auroc"] == pytest.approx(roc_auc_score(y[male, 0], s[male, 0]), abs=1e-6)
    ages = manifest["age"].to_numpy()
    assert groups["age_band"]["40-60"]["n"] == int(((ages >= 40) & (ages < 60)).sum())


def test_multiclass_accuracy_auroc_and_confusion() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array(
        [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]]
    )
    onehot = np.eye(3)[truth]
    onehot[5] = np.nan  # unknown class: dropped
    m = multiclass_metrics(onehot, scores, LABELS, n_bootstrap=50)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    for c, label in enumerate(LABELS):
        expected = roc_auc_score(truth[:5] == c, scores[:5, c])
        assert m["per_class"][label]["auroc"] == pytest.approx(expected, abs=1e-6)


def test_regression_metrics_and_mae_by_band() -> None:
    y = np.array([30.0, 50.0, 100.0, 150.0, 200.0, np.nan])
    p = np.array([40.0, 40.0, 90.0, 160.0, 230.0, 10.0])
    m = regression_metrics(y, p, [0, 60, 120, 180, 240], n_bootstrap=500, sex=np.array(["M", "F", "M", "F", "", "M"]))
    assert m["n"] == 5
    assert m["mae"] == pytest.approx((10 + 10 + 10 + 10 + 30) / 5)
    assert m["rmse"] == pytest.approx(np.sqrt((4 * 100 + 900) / 5))
    assert m["bias"] == pytest.approx((10 - 10 - 10 + 10 + 30) / 5)
    assert m["by_band"]["0-60"] == {"n": 2, "mae": 10.0, "bias": 0.0}
    assert m["by_band"]["180-240"]["mae"] == 30.0
    assert m["by_sex"] == {"F": {"n": 2, "mae": 10.0}, "M": {"n": 2, "mae": 10.0}}
    lo, hi = m["mae_ci"]
    assert lo <= m["mae"] <= hi and lo >= 10.0 and hi <= 30.0
