"""Class activation maps drawn over the radiograph: pure array functions, no model, no torch.

The exported graph already returns the CAM of every output (the last feature map weighted by the
linear head, as in CheXNet). Here a map is normalised to [0, 1], mapped back onto the original
image — undoing the pad-to-square of :func:`radflow.data.preprocess.prepare_pixels`, so the heat
sits on the anatomy that caused it — colour-mapped and alpha-blended, then encoded as PNG.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MAX_SIDE",
    "cam_to_image",
    "encode_png",
    "normalise_cam",
    "overlay",
    "render_overlay",
    "to_grey8",
]

DEFAULT_ALPHA = 0.4
"""Weight of the heatmap in the blend; the radiograph keeps the rest, so anatomy stays readable."""
DEFAULT_MAX_SIDE = 1024
"""Overlays of larger images are scaled down to this side: a heatmap needs no detector resolution."""


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """A raw map ``(h, w)`` min-max scaled to float32 [0, 1]; a flat map becomes all zeros."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"a class activation map is 2-D (h, w), got shape {cam.shape}.")
    lo, hi = float(cam.min()), float(cam.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
        return np.zeros_like(cam)
    return (cam - lo) / (hi - lo)


def cam_to_image(cam01: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a [0, 1] map of the square model input onto an image of ``shape`` (H, W).

    The model saw the image centred in a black square of side max(H, W); the map is resized to
    that square and the padding cropped away, the inverse of ``prepare_pixels``.
    """
    h, w = shape
    side = max(h, w)
    square = cv2.resize(np.asarray(cam01, dtype=np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    top, left = (side - h) // 2, (side - w) // 2
    return np.ascontiguousarray(square[top : top + h, left : left + w])


def to_grey8(image: np.ndarray) -> np.ndarray:
    """A grey image as ``uint8``: float images are taken as [0, 1], uint8 passes through."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def overlay(grey: np.ndarray, heat01: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend a [0, 1] heatmap (JET colours) over a grey ``uint8`` image of the same shape; BGR ``uint8``."""
    if grey.shape != heat01.shape:
        raise ValueError(f"image {grey.shape} and heatmap {heat01.shape} must have the same shape.")
    colours = cv2.applyColorMap(to_grey8(heat01), cv2.COLORMAP_JET)
    base = cv2.cvtColor(to_grey8(grey), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(colours, alpha, base, 1.0 - alpha, 0.0)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` grey or BGR image."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as PNG.")
    return buf.tobytes()


def render_overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = DEFAULT_ALPHA, max_side: int | None = DEFAULT_MAX_SIDE
) -> np.ndarray:
    """The BGR overlay of one raw CAM ``(h, w)`` on a grey image (float [0, 1] or uint8), at most ``max_side``."""
    grey = to_grey8(image)
    h, w = grey.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    # the map is drawn at the output size: a full-size map of a large image (and its padded square) is never made
    heat = cam_to_image(normalise_cam(cam), grey.shape[:2])
    return overlay(grey, heat, alpha)
