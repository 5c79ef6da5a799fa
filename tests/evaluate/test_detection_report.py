"""The evaluation report of a detection kind: kept boxes against true boxes, its headline, FROC figure,
HTML tables and the per-image boxes the registry's paired champion comparison reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from radflow.config import EvaluateConfig
from radflow.data.dataset import Dataset
from radflow.evaluate.report import PREDICTIONS_FILE, evaluate_checkpoint
from radflow.metrics.detection import paired_map_difference
from radflow.registry.comparison import align_predictions
from radflow.registry.gates import PairedBoxes
from radflow.tasks.detection import MAX_DETECTIONS
from radflow.train.checkpoint import ModelMeta, save_checkpoint
from radflow.train.models import create_model
from tests.train.detection_fixtures import make_detection_dataset

FAST = EvaluateConfig(n_bootstrap=20, pdf=False)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("det-report")
    ds_path = make_detection_dataset(root, n=18)
    ds = Dataset.open(ds_path)
    torch.manual_seed(0)
    meta = ModelMeta(
        arch="fcos_small",
        task="detection",
        labels=ds.labels,
        num_outputs=len(ds.labels),
        preprocess=ds.spec.to_dict(),
        dataset_version=ds.version,
        dataset_path=str(ds_path),
    )
    checkpoint = save_checkpoint(root / "det.pt", create_model("fcos_small", len(ds.labels)), meta)
    out = root / "evaluation"
    return evaluate_checkpoint(checkpoint, ds_path, "test", FAST, out, batch_size=4), out, ds_path


def test_detection_report_scores_the_kept_boxes_against_the_true_ones(evaluated: tuple[dict, Path, Path]) -> None:
    result, out, ds_path = evaluated
    ds = Dataset.open(ds_path)
    rows = ds.indices("test")
    m = result["metrics"]
    assert m["n"] == len(rows) == result["n"]
    truths = sum(len(b) for b in ds.boxes(rows))
    assert sum(e["truths"] for e in m["per_class"].values()) == truths > 0
    headline = result["headline"]
    for key in ("test_map50", "test_map", "test_froc_cpm", "test_image_auroc", "test_ap50_Lung_Opacity"):
        assert key in headline, key
    assert headline["test_map50"] is not None and 0 <= headline["test_map50"] <= 1
    assert json.loads((out / "evaluation.json").read_text())["headline"] == headline
    assert "froc.png" in result["plots"] and (out / "froc.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "FROC CPM" in page and "NMS IoU" in page and "Lung Opacity" in page


def test_predictions_hold_each_images_boxes_for_the_paired_comparison(evaluated: tuple[dict, Path, Path]) -> None:
    result, out, ds_path = evaluated
    ds = Dataset.open(ds_path)
    rows = ds.indices("test")
    frame = pd.read_parquet(out / PREDICTIONS_FILE)
    assert list(frame["image_id"]) == ds.manifest["image_id"].astype(str).iloc[rows].tolist()
    assert {"truth:Lung Opacity", "boxes:Lung Opacity"} <= set(frame.columns)
    for cell, boxes in zip(frame["truth:Lung Opacity"], ds.boxes(rows), strict=True):
        assert np.allclose(np.reshape(cell, (-1, 4)), boxes[["x0", "y0", "x1", "y1"]].to_numpy(), atol=1e-4)
    kept = [np.reshape(c, (-1, 5)) for c in frame["boxes:Lung Opacity"]]
    assert all(len(k) <= MAX_DETECTIONS and (np.diff(k[:, 4]) <= 0).all() for k in kept)  # best first
    paired, why = align_predictions(out / PREDICTIONS_FILE, out / PREDICTIONS_FILE)
    assert why is None and isinstance(paired, PairedBoxes) and paired.labels == ["Lung Opacity"]
    assert len(paired.truths) == len(rows) and paired.candidate[0].shape[1] == 6
    test = paired_map_difference(paired.champion, paired.candidate, paired.truths, paired.groups, 1, n_boot=20, ci=0.95)
    assert test["diff"] == pytest.approx(0.0) and test["map_b"] == pytest.approx(result["headline"]["test_map50"])


def test_a_detection_file_is_not_compared_with_a_classifiers(
    evaluated: tuple[dict, Path, Path], tmp_path: Path
) -> None:
    _, out, _ = evaluated
    frame = pd.read_parquet(out / PREDICTIONS_FILE)[["image_id", "patient_id"]].assign(
        **{"score:A": 0.5, "target:A": 1.0}
    )
    frame.to_parquet(tmp_path / "scores.parquet", index=False)
    paired, why = align_predictions(out / PREDICTIONS_FILE, tmp_path / "scores.parquet")
    assert paired is None and why is not None and "boxes" in why
