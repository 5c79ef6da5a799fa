"""Sub-pixel drawing in body units on float32 layers (OpenCV with fixed-point coordinates)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["Canvas"]


class Canvas:
    """Drawing in body units (1.0 = image width) on float32 layers, with sub-pixel precision."""

    SHIFT = 4

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.scale = float(width)

    def layer(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.float32)

    def pts(self, xy: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(xy, np.float64) * self.scale * (1 << self.SHIFT)).astype(np.int32).reshape(-1, 1, 2)

    def px(self, length: float) -> int:
        return max(1, round(length * self.scale))

    def poly(self, layer: np.ndarray, xy: np.ndarray, value: float = 1.0) -> None:
        cv2.fillPoly(layer, [self.pts(xy)], value, cv2.LINE_AA, self.SHIFT)

    def line(self, layer: np.ndarray, xy: np.ndarray, thick: float, value: float = 1.0) -> None:
        cv2.polylines(layer, [self.pts(xy)], False, value, self.px(thick), cv2.LINE_AA, self.SHIFT)

    def ellipse(
        self, layer: np.ndarray, c: tuple[float, float], axes: tuple[float, float], angle: float, value: float = 1.0
    ) -> None:
        k = self.scale * (1 << self.SHIFT)
        centre = (round(c[0] * k), round(c[1] * k))
        size = (max(1, round(axes[0] * k)), max(1, round(axes[1] * k)))
        cv2.ellipse(layer, centre, size, angle, 0, 360, value, -1, cv2.LINE_AA, self.SHIFT)

    def blur(self, layer: np.ndarray, sigma: float) -> np.ndarray:
        s = sigma * self.scale
        return layer if s < 0.3 else cv2.GaussianBlur(layer, (0, 0), s)
