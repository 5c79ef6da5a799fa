"""The detection kind: box selection (threshold, per-label NMS), AP at IoU 0.5, answers and corrections."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from radflow.tasks import InvalidFeedbackError, NotBuiltError, get_task
from radflow.tasks.detection import (
    MAX_DETECTIONS,
    detection_features,
    pad_rows,
    select_detections,
)
from radflow.tasks.evaluation import EvalData, ReportTable

LABELS = ["Lung Opacity", "Nodule"]
KIND = get_task("detection")


def _anchors(*rows: tuple[float, float, float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)  # x0, y0, x1, y1, score Lung Opacity, score Nodule


def test_selection_suppresses_overlaps_per_label_only_and_drops_low_scores() -> None:
    anchors = _anchors(
        (0, 0, 10, 10, 0.9, 0.0),
        (1, 0, 11, 10, 0.8, 0.7),  # overlaps the first (IoU 0.82): suppressed for Lung Opacity, kept as Nodule
        (20, 20, 30, 30, 0.6, 0.01),  # apart: kept; its Nodule score is under the threshold
        (0, 0, 10, 10, 0.04, 0.0),
    )
    kept = select_detections(anchors)
    assert kept[:, 4].tolist() == [0, 1, 0] and kept[:, 5].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert kept[1, :4].tolist() == [1, 0, 11, 10]
    assert len(select_detections(anchors, iou=0.9)) == 4  # at 0.9 the overlap is no duplicate
    many = np.tile(_anchors((0, 0, 1, 1, 0.5, 0.0)), (300, 1))
    many[:, 0] = np.arange(300) * 2
    many[:, 2] = many[:, 0] + 1
    assert len(select_detections(many)) == MAX_DETECTIONS


def _split() -> tuple[list[np.ndarray], list[np.ndarray]]:
    truths = [np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]], np.float32), np.zeros((0, 5), np.float32)]
    preds = [
        np.array([[0, 0, 10, 10, 0, 0.9], [0, 0, 10, 9, 0, 0.8], [50, 50, 60, 60, 1, 0.7]], np.float32),
        np.array([[0, 0, 5, 5, 0, 0.85]], np.float32),
    ]
    return preds, truths


def test_validation_map50_is_cocos_ap_of_a_known_ranking() -> None:
    preds, truths = _split()
    # Lung Opacity ranking: hit (0.9), false (0.85), duplicate = false (0.8): precision 1 up to recall 1/2,
    # so COCO's 101 recall points give 51/101; Nodule has no true box and no AP.
    metrics = KIND.val_metrics(LABELS, pad_rows(preds, 5, 6), pad_rows(truths, 3, 5))
    assert metrics == {"val_ap50_Lung_Opacity": pytest.approx(51 / 101), "val_map50": pytest.approx(51 / 101)}
    name, value = KIND.quality_metric(LABELS, pad_rows(preds, 5, 6), pad_rows(truths, 3, 5))
    assert name == "map50" and value == pytest.approx(51 / 101)


def test_evaluation_headlines_the_gate_metrics_and_tabulates_per_label() -> None:
    preds, truths = _split()
    data = EvalData(
        labels=LABELS,
        split="test",
        targets=pad_rows(truths, 3, 5),
        scores=pad_rows(preds, 5, 6),
        manifest=pd.DataFrame({"patient_id": ["a", "b"]}),
        val=lambda: None,
        stored_thresholds=None,
        unit=None,
        n_bootstrap=20,
        ci=0.95,
        calibration_bins=10,
        threshold_method="youden",
        target_sensitivity=0.9,
        age_bands=[],
    )
    result = KIND.evaluate(data)
    json.dumps(result)
    headline = KIND.headline(result)
    assert headline["map50"] == pytest.approx(51 / 101) and headline["ap50_Lung_Opacity"] == headline["map50"]
    assert headline["ap50_Nodule"] is None and any("Nodule: no true box" in w for w in data.warnings)
    (table,) = KIND.summary(result)
    assert isinstance(table, ReportTable) and [row[0] for row in table.sections[0]] == LABELS
    assert all(len(row) == len(table.columns) for rows in table.sections for row in rows)
    data.scores = np.zeros((2, 4))
    with pytest.raises(NotBuiltError, match="kept boxes"):
        KIND.evaluate(data)


def test_activation_is_fcos_score_and_the_loss_the_detectors_terms() -> None:
    raw = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 0.0, 2.0, 0.0]]])
    out = KIND.activate(raw, None, None)
    assert out[0, 0, :4].tolist() == [1, 2, 3, 4]
    assert out[0, 0, 4:].tolist() == pytest.approx([0.5, float(np.sqrt(0.5 / (1 + np.exp(-2.0))))])
    terms = torch.tensor([0.5, 0.25, 0.125])
    assert float(KIND.make_loss("detector")(terms, torch.zeros(1))) == pytest.approx(0.875)


def test_answer_feedback_and_drift_features() -> None:
    rows = np.array([[1.234, 2, 30.5, 40, 1, 0.87654321]])
    answer = KIND.encode(rows, LABELS, {}, None).to_dict()
    json.dumps(answer)
    assert answer == {"boxes": [{"label": "Nodule", "score": 0.876543, "box": [1.23, 2.0, 30.5, 40.0]}]}
    KIND.validate_feedback(answer, {"Nodule": 0, "Lung Opacity": 1}, None)
    with pytest.raises(InvalidFeedbackError, match="0 or 1"):
        KIND.validate_feedback(answer, {"Nodule": 2}, None)
    with pytest.raises(InvalidFeedbackError, match="send 'labels'"):
        KIND.validate_feedback(answer, None, 1.0)
    assert KIND.check_boxes([{"label": "Nodule", "box": [1, 2, 3, 4]}], LABELS) == [
        {"label": "Nodule", "box": [1.0, 2.0, 3.0, 4.0]}
    ]
    with pytest.raises(InvalidFeedbackError, match=r"boxes\[0\].label 'Mass'"):
        KIND.check_boxes([{"label": "Mass", "box": [1, 2, 3, 4]}], LABELS)
    with pytest.raises(InvalidFeedbackError, match=r"boxes\[1\].box \[5, 2, 3, 4\] needs x1 > x0"):
        KIND.check_boxes([{"label": "Nodule", "box": [1, 2, 3, 4]}, {"label": "Nodule", "box": [5, 2, 3, 4]}], LABELS)
    features = ["boxes:Lung Opacity", "boxes:Nodule", "top_score:Lung Opacity", "top_score:Nodule"]
    assert KIND.drift_features(LABELS) == features
    assert detection_features(rows, LABELS) == {
        "boxes:Lung Opacity": 0.0,
        "top_score:Lung Opacity": 0.0,
        "boxes:Nodule": 1.0,
        "top_score:Nodule": pytest.approx(0.87654321),
    }


def test_selection_is_torchvisions_batched_nms_on_random_boxes() -> None:
    import torch
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 400))
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(0, 20, (n, 2))  # some of no area, which overlap nothing
        wh[rng.random(n) < 0.05] = 0
        anchors = np.concatenate([xy, xy + wh, rng.uniform(0, 1, (n, 2))], axis=1).astype(np.float32)
        kept = select_detections(anchors)
        anchor, label = np.nonzero(anchors[:, 4:] > 0.05)
        boxes, scores = torch.from_numpy(anchors[anchor, :4]), torch.from_numpy(anchors[anchor, 4 + label])
        order = torch.argsort(-scores, stable=True)
        want = batched_nms(boxes[order], scores[order], torch.from_numpy(label)[order], 0.5)[:MAX_DETECTIONS]
        assert kept[:, 5].tolist() == pytest.approx(scores[order][want].tolist())
        assert kept[:, 4].tolist() == label[order.numpy()][want.numpy()].tolist()
