"""Inter-annotator agreement (kappa, Dice, box F1) and the documented resolution rule."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.annotate.agreement import (
    box_agreement,
    label_agreement,
    mask_agreement,
    resolve_boxes,
    resolve_labels,
    resolve_masks,
    resolve_value,
)


def test_kappa_per_label_over_annotator_pairs() -> None:
    same = [{"a": {"X": v}, "b": {"X": v}} for v in (0, 1, 0, 1)]
    assert label_agreement(same, ["X"])["X"] == {"kappa": 1.0, "pairs": 1}
    flipped = [{"a": {"X": v}, "b": {"X": 1 - v}} for v in (0, 1, 0, 1)]
    assert label_agreement(flipped, ["X"])["X"]["kappa"] == pytest.approx(-1.0)
    one_class = [{"a": {"X": 1}, "b": {"X": 1}}]
    assert label_agreement(one_class, ["X"])["X"]["kappa"] is None  # undefined, not perfect


def test_majority_resolves_and_a_tie_leaves_the_finding_unlabelled() -> None:
    assert resolve_labels([{"X": 1, "Y": 1}, {"X": 1, "Y": 0}, {"X": 0}]) == {"X": 1}  # Y: 1 to 1
    assert resolve_labels([{"X": 1}, {"X": 0}]) == {}
    assert resolve_value([100.0, 110.0, 130.0]) == 110.0


def test_masks_agree_by_dice_and_resolve_by_pixel_majority() -> None:
    a = np.zeros((1, 8, 8), dtype=bool)
    a[0, :4] = True
    b = np.zeros_like(a)
    b[0, :2] = True
    assert mask_agreement([[a, b]], ["lung"])["lung"]["dice"] == pytest.approx(2 * 16 / (32 + 16), abs=1e-4)
    c = np.zeros_like(a)
    c[0, 2:6] = True
    majority = resolve_masks([a[0], b[0], c[0]])
    assert majority[:4].all() and not majority[4:].any()


def test_boxes_agree_by_matched_f1_and_resolve_by_fusion_kept_by_half_the_readers() -> None:
    near = {"a": [{"label": "N", "box": [0, 0, 10, 10]}], "b": [{"label": "N", "box": [1, 0, 11, 10]}]}
    lonely = {"a": [{"label": "N", "box": [0, 0, 10, 10]}], "b": [], "c": []}
    assert box_agreement([near], ["N"])["f1"] == pytest.approx(1.0)
    (fused,) = resolve_boxes(near)
    assert fused["label"] == "N" and np.allclose(fused["box"], [0.5, 0, 10.5, 10])
    assert resolve_boxes(lonely) == []  # one reader of three drew it
