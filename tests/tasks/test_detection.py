"""The detection kind: box selection (threshold, per-label NMS), AP at IoU 0.5, answers and corrections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from radflow.tasks import InvalidFeedbackError, get_task
from radflow.tasks.detection import (
    MAX_DETECTIONS,
    average_precision_50,
    detection_features,
    pad_rows,
    select_detections,
)

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


def test_ap50_of_a_known_ranking() -> None:
    truths = [np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]], np.float32), np.zeros((0, 5), np.float32)]
    preds = [
        np.array([[0, 0, 10, 10, 0, 0.9], [0, 0, 10, 9, 0, 0.8], [50, 50, 60, 60, 1, 0.7]], np.float32),
        np.array([[0, 0, 5, 5, 0, 0.85]], np.float32),
    ]
    # Lung Opacity ranking: hit (0.9), false (0.85), duplicate = false (0.8); recall 1/2 at precision 1, never 1.
    ap, nodule = average_precision_50(preds, truths, 2)
    assert ap == pytest.approx(0.5) and np.isnan(nodule)
    second = [preds[0][:1], np.array([[20, 20, 30, 31, 0, 0.1]], np.float32)]
    assert average_precision_50(second, [truths[0], truths[0][1:]], 1) == [pytest.approx(2 / 3)]
    metrics = KIND.val_metrics(LABELS, pad_rows(preds, 5, 6), pad_rows(truths, 3, 5))
    assert metrics == {"val_ap50_Lung_Opacity": pytest.approx(0.5), "val_map50": pytest.approx(0.5)}
    assert KIND.quality_metric(LABELS, pad_rows(preds, 5, 6), pad_rows(truths, 3, 5)) == ("map50", pytest.approx(0.5))


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
