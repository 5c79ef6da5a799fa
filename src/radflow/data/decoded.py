"""What decoding an image gives: :class:`DecodedImage`, and the size limits every decoder enforces.

Its own module so that :mod:`radflow.data.decode` (which dispatches to the DICOM decoder) and
:mod:`radflow.data.dicom` (which builds a DecodedImage) both import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radflow.errors import ImageDecodeError

__all__ = ["DEFAULT_MAX_ASPECT_RATIO", "DEFAULT_MAX_PIXELS", "DecodedImage", "check_size"]

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest width x height accepted (a 8k x 8k detector image fits)."""
DEFAULT_MAX_ASPECT_RATIO = 8.0
"""Longest side over shortest side accepted. Radiographs are near square (stitched long-leg and
whole-spine images reach about 1:4); a 1x120000 strip is not an image to pad to a square."""


def check_size(
    width: int,
    height: int,
    name: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> None:
    """Refuse a ``width`` x ``height`` image before its pixels are decoded (or padded): too many pixels, too thin.

    Decoders call it with the size their header declares, so the refusal costs no allocation;
    the message names the size and the limit, fit for a 4xx answer.
    """
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image is {width}x{height} pixels: nothing to decode", path=name)
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}", path=name
        )
    long, short = max(width, height), min(width, height)
    if max_aspect_ratio is not None and long > max_aspect_ratio * short:
        ratio = long / short
        raise ImageDecodeError(
            f"image is {width}x{height} pixels, an aspect ratio of {ratio:,.0f}:1, beyond the limit of "
            f"{max_aspect_ratio:g}:1 (padding it to a {long}x{long} square would waste memory); crop it to the anatomy",
            path=name,
        )


@dataclass
class DecodedImage:
    """A decoded radiograph. ``meta`` never holds PHI; ``identifiers`` must be hashed before storage."""

    pixels: np.ndarray
    """float32 (H, W) in [0, 1], 0 = black, after any DICOM LUTs and MONOCHROME1 inversion."""
    format: str
    """"png", "jpeg" or "dicom"."""
    bits: int
    """Bit depth of the stored values (8 for JPEG, 8/16 for PNG, BitsStored for DICOM)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Non-identifying attributes: sex, age (years), view, projection, modality, photometric, and
    ``spacing``: the (row, column) pixel size in mm of a DICOM that states it, else absent or None."""
    identifiers: dict[str, str] = field(default_factory=dict)
    """Raw identifiers (patient_id, study_uid, sop_instance_uid) for hashing; never written as-is."""
