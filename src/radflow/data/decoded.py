"""What decoding an image gives: :class:`DecodedImage`, and the pixel limit every decoder enforces.

Its own module so that :mod:`radflow.data.decode` (which dispatches to the DICOM decoder) and
:mod:`radflow.data.dicom` (which builds a DecodedImage) both import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedImage"]

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest width x height accepted (a 8k x 8k detector image fits)."""


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
    """Non-identifying attributes: sex, age (years), view, projection, modality, photometric."""
    identifiers: dict[str, str] = field(default_factory=dict)
    """Raw identifiers (patient_id, study_uid, sop_instance_uid) for hashing; never written as-is."""
