"""radflow.data.masks: packed structure bits and the image's pad-to-square geometry applied to masks."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.data.masks import mask_dtype, pack, prepare_mask, restore_mask, unpack
from radflow.data.preprocess import MAX_PAD_SIDE, prepare_pixels
from radflow.errors import DataError


def _masks(k: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((k, h, w)) < 0.3


@pytest.mark.parametrize(("k", "dtype"), [(1, np.uint8), (8, np.uint8), (9, np.uint16), (17, np.uint32)])
def test_pack_keeps_overlapping_structures_in_the_smallest_type(k: int, dtype: type) -> None:
    masks = _masks(k, 5, 7)
    packed = pack(masks)
    assert packed.dtype == dtype and packed.shape == (5, 7)
    assert np.array_equal(unpack(packed, k), masks)
    assert np.array_equal(unpack(pack(masks[None]), k)[0], masks)  # a leading batch axis


def test_too_many_or_no_structures_are_refused() -> None:
    with pytest.raises(DataError, match="at most 32"):
        mask_dtype(33)
    with pytest.raises(DataError, match="at least one"):
        mask_dtype(0)


@pytest.mark.parametrize("shape", [(40, 64), (64, 40), (48, 48), (30, 101)])
def test_a_mask_lands_where_its_image_does(shape: tuple[int, int]) -> None:
    """A full mask covers exactly the pixels a full image covers after prepare_pixels (the padding is 0)."""
    image = prepare_pixels(np.ones(shape, np.float32), 32)
    mask = prepare_mask(np.ones(shape, bool), 32)
    assert mask.dtype == np.bool_ and mask.shape == (32, 32)
    inside = image > 127
    assert (mask == inside).mean() > 0.97  # nearest vs area resampling differ only on the border rows
    packed = prepare_mask(pack(_masks(3, *shape)), 32)
    assert packed.dtype == np.uint8 and set(np.unique(packed)) <= set(range(8))


def test_restore_undoes_the_geometry_exactly_at_full_resolution() -> None:
    truth = np.zeros((2, 40, 64), bool)
    truth[0, 5:30, 10:50] = True
    truth[1, 20:40, 0:20] = True
    square = np.stack([prepare_mask(m, 64) for m in truth])  # no resampling: 64 is the padded side
    assert np.array_equal(restore_mask(square, 40, 64), truth)
    probs = restore_mask(square.astype(np.float32) * 0.9, 40, 64)
    assert probs.dtype == np.float32 and np.array_equal(probs > 0.5, truth)


def test_a_long_strip_is_capped_like_its_image() -> None:
    long = np.zeros((MAX_PAD_SIDE * 2, 1024), np.uint16)
    long[:MAX_PAD_SIDE] = 3
    out = prepare_mask(long, 64)  # capped to 4096 x 512, padded to 4096 square, then 64 px: an 8 px wide strip
    assert out.dtype == np.uint16 and set(np.unique(out)) == {0, 3}
    assert (out > 0).sum(axis=1).max() == 8
    back = restore_mask(out[None] > 0, MAX_PAD_SIDE * 2, 1024)
    assert back.shape == (1, MAX_PAD_SIDE * 2, 1024)
    assert back[0, : MAX_PAD_SIDE - 128].all() and not back[0, MAX_PAD_SIDE + 128 :].any()
