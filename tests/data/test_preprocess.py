"""Pad-to-square preprocessing: the padded square is bounded before it is allocated, whatever the shape."""

from __future__ import annotations

import io
import time
import tracemalloc

import cv2
import numpy as np
import pytest
from PIL import Image

from radflow.data import preprocess
from radflow.data.decode import decode_image
from radflow.data.preprocess import MAX_PAD_SIDE, padded_side, prepare_pixels
from radflow.errors import ImageDecodeError


def _strip_png(width: int, height: int, noise: bool = False) -> bytes:
    if noise:
        img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8))
    else:
        img = Image.new("L", (width, height))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _pad_then_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The textbook pad-to-square then area resample, for comparison (allocates the full square)."""
    h, w = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)
    out = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _peak_mb(fn: object) -> tuple[float, object]:
    tracemalloc.start()
    try:
        result = fn()  # type: ignore[operator]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / 1e6, result


@pytest.mark.parametrize("shape", [(120000, 1), (20, 20000)])
def test_padding_bombs_never_allocate_the_padded_square(shape: tuple[int, int]) -> None:
    # A 1x120000 strip padded to its square is 57.6 GB of floats; 20000x20 is 1.6 GB.
    image = np.ones(shape, np.float32)
    start = time.perf_counter()
    peak, out = _peak_mb(lambda: prepare_pixels(image, 64))
    elapsed = time.perf_counter() - start
    assert isinstance(out, np.ndarray) and out.shape == (64, 64) and out.dtype == np.uint8
    assert peak < 4 * MAX_PAD_SIDE**2 * 1.5 / 1e6 + image.nbytes / 1e6, f"peak {peak:.0f} MB"
    assert elapsed < 2.0
    # the strip keeps its proportion: a faint centred line across black padding
    assert out.max() > 0 and (out == 0).mean() > 0.9
    assert padded_side(*shape) == MAX_PAD_SIDE


def test_images_within_the_pad_limit_are_preprocessed_exactly_as_before() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((300, 180), dtype=np.float32)
    assert np.array_equal(prepare_pixels(image, 64), _pad_then_resize(image, 64))


def test_images_beyond_the_pad_limit_match_pad_then_resize_closely(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "MAX_PAD_SIDE", 256)  # small, so the comparison stays cheap
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.random((1024, 600), dtype=np.float32), (0, 0), 8)
    bounded = prepare_pixels(image, 64).astype(int)
    full = _pad_then_resize(image, 64).astype(int)
    assert np.abs(bounded - full).mean() < 1.0 and np.abs(bounded - full).max() <= 4


def test_pixel_bomb_pngs_are_refused_from_the_header_naming_their_size() -> None:
    tall = _strip_png(1, 120000)
    assert len(tall) < 400  # a few hundred bytes on the wire
    with pytest.raises(ImageDecodeError, match=r"^up\.png: image is 1x120000 pixels, an aspect ratio of 120,000:1"):
        decode_image(tall, name="up.png")
    wide = _strip_png(20000, 20, noise=True)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match=r"20000x20 pixels, an aspect ratio of 1,000:1, beyond the limit"):
            decode_image(wide, name="wide.png")
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak < 5, f"refusing took {peak:.1f} MB: the pixels were decoded"
    # with the limit lifted the strip decodes (400k pixels) and preprocesses within bounds
    decoded = decode_image(wide, max_aspect_ratio=None)
    assert decoded.pixels.shape == (20, 20000)
    assert prepare_pixels(decoded.pixels, 64).shape == (64, 64)


def test_training_spacing_follows_the_pad_cap_and_resample() -> None:
    from radflow.data.preprocess import MAX_PAD_SIDE, training_spacing

    assert training_spacing((0.5, 0.5), 100, 50, 50) == (1.0, 1.0)  # pad keeps, 100 -> 50 doubles
    assert training_spacing((0.2, 0.3), 64, 64, 64) == (0.2, 0.3)
    long = 2 * MAX_PAD_SIDE  # capped first: the long side halves, then the square is resampled
    row, col = training_spacing((0.1, 0.1), long, MAX_PAD_SIDE, 256)
    assert row == pytest.approx(0.1 * 2 * MAX_PAD_SIDE / 256) and col == pytest.approx(0.1 * 2 * MAX_PAD_SIDE / 256)
