"""Every figure is written as a non-empty PNG, including labels that lack a class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radflow.evaluate import plots
from radflow.metrics.metrics import multilabel_metrics, regression_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 2000


def test_classification_figures_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((80, 3)) < 0.4).astype(float)
    y[:, 2] = 0  # a label without positives still gets a legend entry, not a crash
    s = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    labels = ["a", "b", "c"]
    m = multilabel_metrics(y, s, labels, {k: 0.5 for k in labels}, n_bootstrap=0)
    per = m["per_label"]
    written = [
        plots.roc_curves(y, s, labels, {k: v["auroc"] for k, v in per.items()}, tmp_path / "roc.png"),
        plots.pr_curves(y, s, labels, {k: v["auprc"] for k, v in per.items()}, tmp_path / "pr.png"),
        plots.reliability_diagram(
            m["calibration"]["per_label"], {k: v["ece"] for k, v in per.items()}, tmp_path / "cal.png"
        ),
        plots.confusion_matrices({"a": [[10, 2], [3, 5]], "b": np.eye(2, dtype=int)}, tmp_path / "cm.png"),
        plots.confusion_matrices({"classes": np.arange(9).reshape(3, 3)}, tmp_path / "cm3.png", labels),
    ]
    assert all(_is_png(p) for p in written)


def test_regression_figures_are_written(tmp_path: Path) -> None:
    y = np.linspace(10, 220, 50)
    p = y + np.random.default_rng(0).normal(0, 10, 50)
    m = regression_metrics(y, p, n_bootstrap=0)
    assert _is_png(plots.regression_scatter(y, p, tmp_path / "scatter.png", "months"))
    assert _is_png(plots.regression_error_by_band(m["by_band"], tmp_path / "bands.png", "months"))


def test_worst_cases_gallery_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
    truth = np.zeros((5, 2, 32, 32), bool)
    truth[:, 0, 4:20, 4:20] = True
    pred = np.roll(truth, 3, axis=3)
    pred[0, 1, 20:24, 20:24] = True  # a structure only predicted; elsewhere in neither mask (no Dice)
    dice = np.array([[0.8, 0.0]] + [[0.8, np.nan]] * 4)
    ids = [f"{i:020x}" for i in range(5)]
    assert _is_png(plots.worst_cases(images, ids, truth, pred, dice, ["Lung", "Nodule"], tmp_path / "worst.png"))
    one = plots.worst_cases(images[:1], ids[:1], truth[:1], pred[:1], dice[:1], ["Lung", "Nodule"], tmp_path / "1.png")
    assert _is_png(one)


def test_froc_curves_are_written_from_the_detection_report(tmp_path: Path) -> None:
    from radflow.metrics.detection import detection_metrics

    preds = [np.array([[2, 2, 10, 10, 0, 0.9], [20, 20, 30, 30, 0, 0.4]], np.float32), np.zeros((0, 6), np.float32)]
    truths = [np.array([[2, 2, 10, 10, 0]], np.float32), np.array([[5, 5, 9, 9, 0]], np.float32)]
    m = detection_metrics(preds, truths, ["a", "b"], n_boot=0)  # "b" has no true box: a legend entry only
    per = {label: e["froc"] for label, e in m["per_class"].items()}
    cpms = {"pooled": m["cpm"], **{label: e["cpm"] for label, e in m["per_class"].items()}}
    assert _is_png(plots.froc_curves(m["fp_rates"], m["froc"], per, cpms, tmp_path / "froc.png"))
