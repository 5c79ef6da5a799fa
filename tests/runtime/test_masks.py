"""Masks in answers: COCO RLE identical to pycocotools', exact round trips, geometry at the input size, PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco

from radflow.data.masks import prepare_mask
from radflow.errors import DataError
from radflow.runtime.masks import (
    PALETTE,
    bounding_box,
    decode_rle,
    encode_label_png,
    encode_mask_png,
    encode_rle,
    original_masks,
    rle_counts,
    structure_answers,
)


def random_masks(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    """Masks that exercise the encoder: empty, full, speckle, blobs, and long runs (large counts and deltas)."""
    blob = np.zeros((h, w), dtype=bool)
    blob[h // 4 : h // 2, w // 3 : w - 2] = True
    first = np.zeros((h, w), dtype=bool)
    first[0, 0] = True
    last = np.zeros((h, w), dtype=bool)
    last[-1, -1] = True
    return [
        np.zeros((h, w), dtype=bool),
        np.ones((h, w), dtype=bool),
        rng.random((h, w)) > 0.5,
        rng.random((h, w)) > 0.97,
        blob,
        first,
        last,
    ]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside pycocotools.decode
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (48, 64), (300, 200)])
def test_rle_matches_pycocotools_and_round_trips(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for mask in random_masks(rng, *shape):
        ours = encode_rle(mask)
        theirs = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours == {"size": [int(s) for s in theirs["size"]], "counts": theirs["counts"].decode("ascii")}
        assert np.array_equal(decode_rle(ours), mask)
        assert np.array_equal(coco.decode({"size": ours["size"], "counts": ours["counts"].encode()}), mask)
        uncompressed = {"size": list(shape), "counts": rle_counts(mask).tolist()}
        assert np.array_equal(decode_rle(uncompressed), mask)
        assert np.array_equal(decode_rle({"size": list(shape), "counts": rle_counts(mask)}), mask)


def test_uncompressed_counts_are_column_major_starting_with_zeros() -> None:
    mask = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)
    assert rle_counts(mask).tolist() == [0, 2, 1, 1, 2]  # read by rows it would be [0, 1, 2, 2, 1]
    assert rle_counts(~mask).tolist() == [2, 1, 1, 2]


def test_bad_rle_is_a_data_error_naming_the_mask() -> None:
    with pytest.raises(DataError, match=r"row 3: RLE covers 7 pixels and runs past the 2 x 3 image \(6 pixels\)"):
        decode_rle({"size": [2, 3], "counts": [3, 4]}, what="row 3")
    with pytest.raises(DataError, match="stops short of"):
        decode_rle({"size": [2, 3], "counts": [3, 1]})
    with pytest.raises(DataError, match="truncated"):
        decode_rle({"size": [4, 4], "counts": "0" + chr(48 + 0x20)})
    with pytest.raises(DataError, match="'~' at 1"):
        decode_rle({"size": [4, 4], "counts": "0~"})
    with pytest.raises(DataError, match="negative"):
        decode_rle({"size": [2, 2], "counts": [5, -1]})
    with pytest.raises(DataError, match=r"'size' must be \[height, width\]"):
        decode_rle({"size": [0, 3], "counts": []})
    big = encode_rle(np.ones((64, 64), dtype=bool))
    with pytest.raises(DataError, match="runs past the 8 x 8 image"):
        decode_rle({"size": [8, 8], "counts": big["counts"]})


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
