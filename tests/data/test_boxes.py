"""Boxes on the pad-to-square geometry (both ways, exact), box checks and multi-reader fusion."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.data.boxes import SourceBox, box_iou, box_rows, check_box, fuse_boxes, to_original, to_training
from radflow.data.masks import prepare_mask
from radflow.data.preprocess import MAX_PAD_SIDE, prepare_pixels
from radflow.errors import DataError


@pytest.mark.parametrize(("height", "width"), [(40, 64), (64, 40), (33, 17), (48, 48), (MAX_PAD_SIDE + 904, 30)])
def test_round_trip_original_training_original(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    x = np.sort(rng.uniform(0, width, (20, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (20, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    trained = to_training(boxes, height, width, 32)
    assert (trained >= 0).all() and (trained <= 32).all()
    assert np.abs(to_original(trained, height, width, 32) - boxes).max() < 1e-9  # well within 0.5 px


def test_box_lands_on_the_same_pixels_as_the_image_and_its_mask() -> None:
    """A bright rectangle on a non-square image: its box after mapping bounds it in the stored pixels exactly."""
    height, width, size = 40, 64, 32  # padded to 64 (12 rows above), then halved
    image = np.zeros((height, width), np.float32)
    image[4:20, 8:24] = 1.0
    box = to_training(np.array([[8, 4, 24, 20]]), height, width, size)[0]
    assert box.tolist() == [4.0, 8.0, 12.0, 16.0]
    pixels = prepare_pixels(image, size)
    mask = prepare_mask(image.astype(np.uint8), size)
    for plane in (pixels > 127, mask > 0):
        rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        assert [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1] == box.tolist()


def test_portrait_image_pads_left_and_right() -> None:
    box = to_training(np.array([[0, 0, 20, 50]]), 50, 20, 25)[0]  # side 50, 15 columns of padding left, halved
    assert box.tolist() == [7.5, 0.0, 17.5, 25.0]


def test_check_box_outside_and_without_area() -> None:
    check_box(SourceBox("A", 0, 0, 24, 20), 20, 24)  # the whole image is fine
    with pytest.raises(DataError, match=r"outside its 24 x 20"):
        check_box(SourceBox("A", 10, 5, 24.5, 20), 20, 24)
    with pytest.raises(DataError, match="no area"):
        check_box(SourceBox("A", 10, 5, 10, 9), 20, 24)
    with pytest.raises(DataError, match="box 'A'") as caught:
        box_rows("img", [SourceBox("A", -1, 0, 3, 3, row=7)], 20, 24, 32, fuse=False)
    assert caught.value.row == 7


def test_fusion_averages_agreeing_readers_and_keeps_a_lone_finding() -> None:
    boxes = [
        SourceBox("Nodule", 10, 10, 20, 20, "R1", 2),
        SourceBox("Nodule", 12, 10, 22, 20, "R2", 3),
        SourceBox("Nodule", 40, 40, 44, 44, "R3", 4),
        SourceBox("Effusion", 10, 10, 20, 20, "R3", 5),  # same place, other label: its own finding
    ]
    fused = {(b.label, b.x0): (b, score) for b, score in fuse_boxes(boxes)}
    nodule, score = fused[("Nodule", 11.0)]
    assert (nodule.x0, nodule.y0, nodule.x1, nodule.y1, nodule.reader) == (11.0, 10.0, 21.0, 20.0, "")
    assert score == pytest.approx(2 / 3)
    assert fused[("Nodule", 40.0)][1] == pytest.approx(1 / 3)
    assert fused[("Effusion", 10.0)][1] == pytest.approx(1 / 3)
    assert len(fused) == 3


def test_one_readers_two_boxes_never_fuse() -> None:
    boxes = [SourceBox("A", 0, 0, 10, 10, "R1"), SourceBox("A", 1, 0, 11, 10, "R1"), SourceBox("A", 0, 0, 10, 10, "R2")]
    fused = fuse_boxes(boxes)
    assert sorted(round(s, 3) for _, s in fused) == [0.5, 1.0]


def test_box_iou() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]))
    assert iou.tolist() == [[pytest.approx(1 / 3), 0.0, 1.0]]
