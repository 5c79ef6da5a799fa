"""The one preprocessing implementation, shared by ingest, training, batch scoring and serving.

Two steps, so that ingest can store compact pixels once and every consumer turns them into
model input the same way:

1. :func:`prepare_pixels` — a decoded grey-level image (float in [0, 1], 0 = black) to a
   square ``uint8`` array at training size: pad to square (anatomy keeps its proportions,
   which matters for e.g. the cardiothoracic ratio), then area-resample. The padded square
   is never larger than :data:`MAX_PAD_SIDE` on a side, whatever the image's shape.
2. :func:`to_model_input` — a batch of those arrays to the normalised float32 NCHW tensor a
   model takes.

Nothing here imports torch: the serving runtime calls these functions directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "MAX_PAD_SIDE",
    "PadGeometry",
    "PreprocessSpec",
    "from_model_input",
    "pad_geometry",
    "pad_to_square",
    "padded_side",
    "prepare_pixels",
    "to_model_input",
]

MAX_PAD_SIDE = 4096
"""Longest side an image is padded at: larger images are area-resampled down to it first.

Padding allocates side x side floats, so a 20000x20 strip would take 1.6 GB and a 1x120000 one
57.6 GB. Every model input is at most 4096 pixels (:class:`PreprocessSpec`), so resampling down to
this side first loses nothing the model sees; images up to this side (nearly every radiograph)
go through exactly the pad-then-resample they always did.
"""


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels become model input; stored in dataset.json, checkpoints and ONNX metadata."""

    size: int = 256
    """Side of the square image, in pixels, after padding and resampling."""
    mean: float = 0.5
    """Subtracted from pixel values scaled to [0, 1]."""
    std: float = 0.25
    """Divides the mean-subtracted values."""
    channels: int = 1
    """Channels of the model input; grey levels are repeated when > 1 (ImageNet-style nets)."""

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096:
            raise ValueError(f"preprocess size must be between 16 and 4096 pixels, got {self.size}.")
        if self.std <= 0:
            raise ValueError(f"preprocess std must be positive, got {self.std}.")
        if self.channels not in (1, 3):
            raise ValueError(f"preprocess channels must be 1 or 3, got {self.channels}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {k: data[k] for k in ("size", "mean", "std", "channels") if k in data}
        return cls(**known)


def padded_side(height: int, width: int) -> int:
    """Side of the square :func:`prepare_pixels` pads an image of this size to (before resampling to the model)."""
    return min(max(height, width), MAX_PAD_SIDE)


@dataclass(frozen=True)
class PadGeometry:
    """Where an image of some height x width lands in the square :func:`prepare_pixels` pads it to."""

    side: int
    """The padded square's side (at most :data:`MAX_PAD_SIDE`)."""
    height: int
    """The image's height inside the square: its own, or less when its long side was capped."""
    width: int
    top: int
    left: int


def pad_geometry(height: int, width: int) -> PadGeometry:
    """The pad-to-square geometry of an image: the one place that computes it (images, masks, restored maps)."""
    side = padded_side(height, width)
    h, w = height, width
    if max(h, w) > side:
        scale = side / max(h, w)
        # the long side lands exactly on ``side``; the short side keeps its proportion (at least 1 pixel)
        h, w = (side, max(1, round(w * scale))) if h >= w else (max(1, round(h * scale)), side)
    return PadGeometry(side, h, w, (side - h) // 2, (side - w) // 2)


def training_spacing(spacing: tuple[float, float], height: int, width: int, size: int) -> tuple[float, float]:
    """The (row, column) mm of one pixel of the ``size`` square :func:`prepare_pixels` makes of a
    ``height`` x ``width`` image whose pixels are ``spacing`` mm: padding keeps the pixel size,
    capping the long side and resampling the square scale it."""
    g = pad_geometry(height, width)
    zoom = g.side / size
    return spacing[0] * height / g.height * zoom, spacing[1] * width / g.width * zoom


def pad_to_square(image: np.ndarray, geometry: PadGeometry, interpolation: int) -> np.ndarray:
    """``image`` capped (resampled with ``interpolation``) and zero-padded, centred, to ``geometry.side`` squared."""
    g = geometry
    if image.shape[:2] != (g.height, g.width):
        image = cv2.resize(image, (g.width, g.height), interpolation=interpolation)
    if g.height == g.width:
        return image
    bottom, right = g.side - g.height - g.top, g.side - g.width - g.left
    return cv2.copyMakeBorder(image, g.top, bottom, g.left, right, cv2.BORDER_CONSTANT, value=0)


def prepare_pixels(image: np.ndarray, size: int) -> np.ndarray:
    """Pad a 2-D grey image (float in [0, 1]) to a square and resample it to ``size`` x ``size``.

    Returns ``uint8``. Padding is black (0), centred, so the image is not distorted. An image
    longer than :data:`MAX_PAD_SIDE` is first area-resampled so its long side is that, keeping its
    proportions: the padded square is computed before it is allocated and stays bounded.
    """
    if image.ndim != 2:
        raise ValueError(f"prepare_pixels expects a 2-D grey image, got shape {image.shape}.")
    if 0 in image.shape:
        raise ValueError(f"prepare_pixels expects a non-empty image, got shape {image.shape}.")
    img: np.ndarray = np.asarray(image, dtype=np.float32)
    geometry = pad_geometry(*img.shape)
    img = pad_to_square(img, geometry, cv2.INTER_AREA)
    if geometry.side != size:
        interp = cv2.INTER_AREA if geometry.side > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_model_input(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``uint8`` images, shape (H, W) or (N, H, W), to a normalised float32 (N, C, H, W) array."""
    batch = pixels[None] if pixels.ndim == 2 else pixels
    if batch.ndim != 3:
        raise ValueError(f"to_model_input expects (H, W) or (N, H, W) pixels, got shape {pixels.shape}.")
    x = batch.astype(np.float32)
    x *= 1.0 / 255.0
    x -= spec.mean
    x *= 1.0 / spec.std
    x = x[:, None, :, :]
    if spec.channels > 1:
        x = np.repeat(x, spec.channels, axis=1)
    return np.ascontiguousarray(x)


def from_model_input(tensor: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The ``uint8`` image ``(H, W)`` behind one model input ``(C, H, W)``: the inverse of :func:`to_model_input`.

    Tensors sent straight to the model (``/v2``) carry no image; this recovers the pixels (first
    channel, rounded to the 8 bits they came from) so they can be monitored and stored like uploads.
    """
    x = np.asarray(tensor, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"from_model_input expects one (C, H, W) tensor, got shape {x.shape}.")
    img = (x[0] * spec.std + spec.mean) * 255.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
