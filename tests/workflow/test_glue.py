"""Glue steps alone: cuts by box and by mask extent with margins at the image's edges, aggregation rules;
and a mask-driven workflow (segment -> crop by mask -> classify -> mean) on exported models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radflow.config import validate_params
from radflow.workflow import aggregate_findings, aggregate_values, crop_boxes, crop_masks, load_workflow, run_workflow
from tests.serve.models import make_onnx, png_bytes


def test_box_cuts_widen_by_the_margin_and_stop_at_the_edges() -> None:
    pixels = np.arange(50 * 40, dtype=np.float32).reshape(50, 40) / 2000
    boxes = [
        {"label": "A", "score": 0.9, "box": [10.0, 20.0, 20.0, 30.0]},
        {"label": "B", "score": 0.2, "box": [0.5, 45.0, 38.0, 50.0]},
        {"label": "A", "score": 0.8, "box": [5.0, 5.0, 5.2, 5.1]},  # thinner than a pixel
    ]
    crops = crop_boxes(pixels, boxes, margin=0.2)
    assert [c.box for c in crops] == [[8, 18, 22, 32], [0, 44, 40, 50], [4, 4, 6, 6]]
    np.testing.assert_array_equal(crops[0].pixels, pixels[18:32, 8:22])
    assert crops[1].source == boxes[1]
    assert [c.source["label"] for c in crop_boxes(pixels, boxes, labels=["A"], min_score=0.85)] == ["A"]
    assert crop_boxes(pixels, []) == []


def test_mask_cuts_take_each_structures_extent_and_skip_empty_masks() -> None:
    pixels = np.zeros((30, 30), np.float32)
    structures: list[dict[str, Any]] = [
        {"structure": "Heart", "bbox": [10, 12, 6, 4]},
        {"structure": "Lung Lesion", "bbox": None},
    ]
    crops = crop_masks(pixels, structures, margin=0.5)
    assert [c.box for c in crops] == [[7, 10, 19, 18]] and crops[0].source["structure"] == "Heart"
    assert crop_masks(pixels, structures, labels=["Lung Lesion"]) == []


def test_aggregates_over_crops() -> None:
    crops = [
        [{"label": "A", "probability": 0.2, "positive": False, "threshold": 0.5}],
        [{"label": "A", "probability": 0.7, "positive": True, "threshold": 0.5}],
        [{"label": "A", "probability": 0.3, "positive": False, "threshold": 0.5}],
    ]
    assert aggregate_findings(crops, "max") == [{"label": "A", "probability": 0.7, "positive": True, "threshold": 0.5}]
    mean = aggregate_findings(crops, "mean")[0]
    assert mean["probability"] == pytest.approx(0.4) and not mean["positive"]
    assert aggregate_findings(crops, "any")[0]["positive"] is True
    assert aggregate_findings([], "max") == []
    assert aggregate_values([3.0, 5.0], "mean") == 4.0 and aggregate_values([3.0, 5.0], "max") == 5.0
    assert aggregate_values([], "max") is None


def test_a_mask_driven_workflow_crops_each_structure(tmp_path: Path) -> None:
    segmenter = make_onnx(tmp_path / "seg", task="segmentation")
    classifier = make_onnx(tmp_path / "cls")
    declared = {
        "steps": [
            {"name": "segment", "model": str(segmenter)},
            {"name": "crop", "crop": "mask", "margin": 0.0},
            {"name": "resize", "resize": 32},
            {"name": "classify", "model": str(classifier)},
            {"name": "mean", "aggregate": "mean"},
        ]
    }
    config = validate_params({"workflows": {"masks": declared}}, "test").workflows["masks"]
    workflow = load_workflow("masks", config, threads=1)
    answer = run_workflow(workflow, png_bytes(5, shape=(48, 40)))
    steps = {s["name"]: s["output"] for s in answer["steps"]}
    drawn = [s for s in steps["segment"]["structures"] if s["bbox"] is not None]
    assert steps["crop"]["count"] == len(drawn)
    for crop, s in zip(steps["crop"]["crops"], drawn, strict=True):
        x, y, w, h = s["bbox"]
        assert crop["box"] == [x, y, x + w, y + h] and crop["source"]["structure"] == s["structure"]
    assert drawn and steps["resize"] == {"count": len(drawn), "size": 32}
    per_crop = steps["classify"]["crops"]
    for j, finding in enumerate(answer["answer"]["findings"]):
        expected = np.mean([c["findings"][j]["probability"] for c in per_crop])
        assert finding["probability"] == pytest.approx(expected)
    assert answer["found"] and answer["steps"][0]["kind"] == "masks"
