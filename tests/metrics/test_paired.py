"""Paired AUROC comparison: DeLong's test and the patient-level paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radflow.metrics.paired import class_counts, delong_auroc, paired_bootstrap_auroc


def _scores(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    weak = y * 0.8 + rng.normal(0, 1, n)
    strong = y * 1.6 + rng.normal(0, 1, n)
    return y, weak, strong


def test_delong_gives_sklearns_aurocs_and_finds_a_real_difference() -> None:
    y, weak, strong = _scores()
    test = delong_auroc(y, weak, strong)
    assert test["auroc_a"] == pytest.approx(roc_auc_score(y, weak), abs=1e-6)
    assert test["auroc_b"] == pytest.approx(roc_auc_score(y, strong), abs=1e-6)
    assert test["diff"] == pytest.approx(test["auroc_b"] - test["auroc_a"], abs=1e-6)
    assert test["ci"][0] > 0 and test["p_value"] < 0.001
    same = delong_auroc(y, weak, weak)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_paired_bootstrap_agrees_with_delong_on_independent_images() -> None:
    y, weak, strong = _scores()
    boot = paired_bootstrap_auroc(y, weak, strong, n_bootstrap=400)
    delong = delong_auroc(y, weak, strong)
    assert boot["diff"] == pytest.approx(delong["diff"], abs=1e-6)
    assert boot["ci"][0] == pytest.approx(delong["ci"][0], abs=0.03)
    assert boot["ci"][1] == pytest.approx(delong["ci"][1], abs=0.03)
    assert 0 < boot["p_value"] < 0.01  # (k + 1) / (B + 1): never exactly 0


def test_paired_bootstrap_resamples_patients_not_images() -> None:
    # The same 60 patients' images repeated 5 times look like 300 independent images to an image
    # bootstrap, whose interval is then far too narrow; resampling patients sees 60.
    y, weak, strong = _scores(60, seed=3)
    rep = lambda v: np.repeat(v, 5)  # noqa: E731
    patients = np.repeat(np.arange(60), 5)
    by_image = paired_bootstrap_auroc(rep(y), rep(weak), rep(strong), n_bootstrap=400)
    by_patient = paired_bootstrap_auroc(rep(y), rep(weak), rep(strong), patients, n_bootstrap=400)
    width = lambda t: t["ci"][1] - t["ci"][0]  # noqa: E731
    assert width(by_patient) > 1.8 * width(by_image)


def test_a_label_without_both_classes_has_no_test() -> None:
    y = np.array([0.0, 0, 0, np.nan, 0])
    s = np.linspace(0, 1, 5)
    assert class_counts(y) == (0, 4)
    for test in (paired_bootstrap_auroc(y, s, s, n_bootstrap=50), delong_auroc(y, s, s)):
        assert test["diff"] is None and test["p_value"] is None and test["negatives"] == 4
