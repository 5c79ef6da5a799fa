"""Levels of detected bodies (a crop step's ``levels``: crops named by vertical order) and the per-patient
summary of several images' answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from radflow.config import validate_params
from radflow.data.synth.spine import SPINE_LEVELS
from radflow.errors import ConfigError
from radflow.workflow.glue import Crop, name_levels, patient_summary


def _crops(tops: list[float]) -> list[Crop]:
    """One crop per box of height 10 starting at each of ``tops`` (in that order), its index in ``source``."""
    return [
        Crop(np.zeros((2, 2)), [0, int(t), 5, int(t) + 10], {"box": [0.0, t, 5.0, t + 10], "k": k})
        for k, t in enumerate(tops)
    ]


def _named(crops: list[Crop]) -> list[tuple[int, str | None]]:
    return [(c.source["k"], c.source["level"]) for c in crops]


def test_crops_are_named_top_to_bottom_whatever_order_the_detector_gave() -> None:
    crops = _crops([50, 10, 90, 30, 70, 110])
    assert _named(name_levels(crops, "spine")) == list(zip([1, 3, 0, 4, 2, 5], SPINE_LEVELS, strict=True))
    # the glue names copies: the crops it was given are unchanged
    assert "level" not in crops[0].source


def test_a_missed_or_extra_body_shifts_the_names_from_the_end_counted_from() -> None:
    five = _crops([30, 50, 70, 90, 110])  # the top body (T12) missed
    assert [level for _, level in _named(name_levels(five, "spine"))] == ["L1", "L2", "L3", "L4", "L5"]
    assert [level for _, level in _named(name_levels(five, "spine", "top"))] == ["T12", "L1", "L2", "L3", "L4"]
    seven = _crops([0, 10, 30, 50, 70, 90, 110])  # one box too many, above the rest
    assert [level for _, level in _named(name_levels(seven, "spine"))] == [None, *SPINE_LEVELS]
    assert _named(name_levels(_crops([40, 20]), ["upper", "lower"])) == [(1, "upper"), (0, "lower")]
    assert name_levels([], "spine") == []


def test_levels_are_declared_on_a_crop_by_box_only_with_distinct_names() -> None:
    def declare(**crop: Any) -> Any:
        steps = [{"name": "detect", "model": "m.onnx"}, {"name": "crop", "crop": "box", **crop}]
        return validate_params({"workflows": {"w": {"steps": steps}}}, "test").workflows["w"].steps[1]

    assert declare(levels="spine").levels == "spine" and declare(levels="spine").levels_from == "bottom"
    assert declare(levels=["C1", "C2"], levels_from="top").levels == ["C1", "C2"]
    with pytest.raises(ConfigError, match="levels must be distinct"):
        declare(levels=["L1", "L1"])
    with pytest.raises(ConfigError, match="levels name the boxes of a crop by box"):
        declare(crop="mask", levels="spine")
    with pytest.raises(ConfigError, match="levels"):
        declare(levels="cervical")


def _answer(crops: list[tuple[str, float, bool]]) -> dict[str, Any]:
    """An aggregate step's output: per-crop findings by level, and their max."""
    per_crop = [
        {"level": level, "findings": [{"label": "schmorl", "probability": p, "positive": pos, "threshold": 0.5}]}
        for level, p, pos in crops
    ]
    top = max(crops, key=lambda c: c[1])
    findings = [{"label": "schmorl", "probability": top[1], "positive": any(c[2] for c in crops), "threshold": 0.5}]
    return {"method": "max", "findings": findings, "crops": per_crop}


def test_a_patients_images_are_summarised_per_label_and_per_level() -> None:
    first = _answer([("L1", 0.2, False), ("L2", 0.7, True)])
    second = _answer([("L1", 0.6, True), ("L2", 0.1, False), ("L3", 0.3, False)])
    summary = patient_summary([first, second])
    assert summary["images"] == 2
    assert summary["findings"] == [{"label": "schmorl", "probability": 0.7, "positive": True}]
    assert summary["levels"] == {
        "L1": [{"label": "schmorl", "probability": 0.6, "positive": True}],
        "L2": [{"label": "schmorl", "probability": 0.7, "positive": True}],
        "L3": [{"label": "schmorl", "probability": 0.3, "positive": False}],
    }
    # an image where nothing was found answers no findings: the patient's summary is the other image's
    assert patient_summary([first, {"findings": [], "crops": []}])["findings"][0]["probability"] == 0.7
    assert patient_summary([]) == {"images": 0, "findings": [], "levels": {}}
