"""Masks in answers: geometry at the input size, area, box and RLE per structure, PNGs (codec: tests/data)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco

from radflow.data.masks import prepare_mask
from radflow.runtime.masks import (
    PALETTE,
    bounding_box,
    decode_rle,
    encode_label_png,
    encode_mask_png,
    original_masks,
    structure_answers,
)


@pytest.mark.parametrize("height,width", [(40, 64), (64, 40), (64, 64)])
def test_original_masks_restore_the_input_geometry_exactly(height: int, width: int) -> None:
    # Masks drawn in 2x2 blocks aligned with the padded square survive the 64 -> 32 -> 64 trip exactly.
    rng = np.random.default_rng(height)
    side = max(height, width)
    coarse = np.repeat(np.repeat(rng.random((2, side // 2, side // 2)) > 0.6, 2, axis=1), 2, axis=2)
    top, left = (side - height) // 2, (side - width) // 2
    truth = coarse[:, top : top + height, left : left + width]
    model = np.stack([prepare_mask(m, 32) for m in truth])
    restored = original_masks(model, height, width)
    assert restored.shape == (2, height, width) and restored.dtype == np.bool_
    assert np.array_equal(restored, truth)
    # Probability maps are thresholded after the bilinear resample: a constant map stays constant.
    probs = np.stack([np.full((32, 32), 0.7, np.float32), np.full((32, 32), 0.3, np.float32)])
    restored = original_masks(probs, height, width)
    assert restored[0].all() and not restored[1].any()


def test_structure_answers_area_bbox_and_rle() -> None:
    masks = np.zeros((2, 30, 50), dtype=bool)
    masks[0, 5:15, 10:30] = True
    answers = structure_answers(masks, ["lung", "heart"], spacing=(0.5, 0.25))
    lung, heart = answers
    assert (lung["structure"], lung["area_px"], lung["area_mm2"], lung["bbox"]) == ("lung", 200, 25.0, [10, 5, 20, 10])
    assert list(coco.toBbox({"size": [30, 50], "counts": lung["rle"]["counts"].encode()})) == lung["bbox"]
    assert int(coco.area({"size": [30, 50], "counts": lung["rle"]["counts"].encode()})) == 200
    assert (heart["area_px"], heart["area_mm2"], heart["bbox"]) == (0, 0.0, None)
    assert np.array_equal(decode_rle(lung["rle"]), masks[0])
    assert structure_answers(masks, ["lung", "heart"])[0]["area_mm2"] is None
    assert bounding_box(np.ones((3, 4), dtype=bool)) == [0, 0, 4, 3]


def test_pngs_hold_exact_values() -> None:
    masks = np.zeros((3, 20, 30), dtype=bool)
    masks[0, 2:10, 2:20] = True
    masks[2, 5:15, 10:25] = True  # overlaps structure 0
    one = np.asarray(Image.open(io.BytesIO(encode_mask_png(masks[0]))))
    assert one.dtype == np.uint8 and np.array_equal(one, masks[0] * 255)

    label = Image.open(io.BytesIO(encode_label_png(masks)))
    assert label.mode == "P" and label.info["transparency"] == 0
    values = np.asarray(label)
    assert np.array_equal(values, masks[0] * 1 + masks[2] * 4)
    palette = np.asarray(label.getpalette()).reshape(-1, 3)
    assert tuple(palette[1]) == PALETTE[0] and tuple(palette[4]) == PALETTE[2]
    assert tuple(palette[5]) == tuple(np.round((np.add(PALETTE[0], PALETTE[2])) / 2).astype(int))

    many = np.zeros((12, 8, 8), dtype=bool)
    many[11, 1, 1] = True
    wide = np.asarray(Image.open(io.BytesIO(encode_label_png(many))))
    assert wide[1, 1] == 1 << 11 and wide.sum() == 1 << 11
    with pytest.raises(ValueError, match="at most 16 structures"):
        encode_label_png(np.zeros((17, 4, 4), dtype=bool))
