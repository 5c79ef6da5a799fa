"""COCO RLE: identical to pycocotools' both ways, exact round trips, bad counts named."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco

from radflow.data.rle import decode_rle, encode_rle, rle_counts
from radflow.errors import DataError


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
