"""Answers as Label Studio results and annotations back as feedback, through radflow's own format readers."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.annotate.config import label_config
from radflow.annotate.results import AnnotationError, annotation_boxes, annotation_feedback, prediction_result
from radflow.data.rle import decode_rle, encode_rle


def test_findings_become_present_absent_choices_and_come_back_as_labels() -> None:
    config = label_config("multilabel", ["Cardiomegaly", "Pneumothorax", "Lung Lesion"])
    answer = {
        "findings": [
            {"label": "Cardiomegaly", "probability": 0.9, "positive": True},
            {"label": "Pneumothorax", "probability": 0.1, "positive": False},
            {"label": "Lung Lesion", "probability": 0.4, "positive": None},  # never learned: left to the expert
        ]
    }
    result = prediction_result(answer, config, (32, 32))
    assert [(r["from_name"], r["value"]["choices"]) for r in result] == [
        ("finding_cardiomegaly", ["present"]),
        ("finding_pneumothorax", ["absent"]),
    ]
    feedback = annotation_feedback({"result": result}, config, (32, 32), "task 1")
    assert feedback.labels == {"Cardiomegaly": 1, "Pneumothorax": 0}
    with pytest.raises(AnnotationError, match="task 1: 'finding_heart' is not a finding"):
        annotation_feedback({"result": [{**result[0], "from_name": "finding_heart"}]}, config, (32, 32), "task 1")


def test_a_mask_goes_out_as_brush_rle_and_comes_back_exact_and_a_wrong_size_is_refused() -> None:
    config = label_config("segmentation", ["left_lung", "right_lung"])
    mask = np.zeros((24, 40), dtype=bool)
    mask[5:15, 3:20] = True
    answer = {"structures": [{"structure": "left_lung", "rle": encode_rle(mask)},
                             {"structure": "right_lung", "rle": encode_rle(np.zeros_like(mask))}]}  # fmt: skip
    result = prediction_result(answer, config, (24, 40))
    assert len(result) == 1 and result[0]["type"] == "brushlabels"  # an empty mask is not drawn
    feedback = annotation_feedback({"result": result}, config, (24, 40), "task 2 annotation 5")
    assert feedback.labels is not None
    assert np.array_equal(decode_rle(feedback.labels["masks"]["left_lung"]), mask)
    assert not decode_rle(feedback.labels["masks"]["right_lung"]).any()  # not painted: absent
    with pytest.raises(AnnotationError, match=r"task 2 annotation 5: the brush mask is 40x24 .* the image is 48x24"):
        annotation_feedback({"result": result}, config, (24, 48), "task 2 annotation 5")


def test_boxes_go_out_in_percent_and_come_back_in_pixels_per_reader() -> None:
    config = label_config("detection", ["Nodule", "Mass"])
    answer = {"boxes": [{"label": "Nodule", "score": 0.8, "box": [10.0, 20.0, 30.0, 50.0]}]}
    result = prediction_result(answer, config, (100, 200))
    assert result[0]["value"] == {
        "x": 5.0, "y": 20.0, "width": 10.0, "height": 30.0, "rotation": 0, "rectanglelabels": ["Nodule"]
    }  # fmt: skip
    rotated = [{**result[0], "value": {**result[0]["value"], "rotation": 30}}]
    tasks = [
        {"id": 1, "annotations": [{"id": 11, "completed_by": 1, "result": result}]},
        {"id": 2, "annotations": [{"id": 12, "completed_by": 1, "result": rotated}]},
    ]
    boxes, errors = annotation_boxes(tasks, ["Nodule", "Mass"])
    (drawn,) = boxes[1].values()
    assert drawn[0]["label"] == "Nodule" and np.allclose(drawn[0]["box"], [10, 20, 30, 50])
    assert "rotated by 30 degrees" in errors[2][0]


def test_a_value_comes_back_from_the_number_control() -> None:
    config = label_config("regression", ["bone_age"], "months")
    result = prediction_result({"prediction": {"value": 101.26, "unit": "months"}}, config, (32, 32))
    assert result == [{"from_name": "value", "to_name": "image", "type": "number", "value": {"number": 101.3}}]
    assert annotation_feedback({"result": result}, config, (32, 32), "task 3").value == pytest.approx(101.3)
