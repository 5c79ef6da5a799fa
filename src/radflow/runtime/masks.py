"""Masks in answers: a model's maps back at the input's size, COCO RLE, area, bounding box and PNGs.

A segmentation answer describes each structure at the input's original resolution (the pad-to-square
resize undone by :func:`radflow.data.masks.restore_mask`): its area in pixels and, when the pixel
spacing is known, mm^2; its bounding box; and the mask itself as COCO run-length encoding, the
compact form every COCO tool reads (``{"size": [h, w], "counts": "..."}``, the string of
``pycocotools.mask.encode``). The PNGs are for people and viewers: one structure as black/white, or
all of them in one label image whose pixel values are the packed structure bits of
:func:`radflow.data.masks.pack` (exact, overlaps kept) with a colour palette.

The codec itself is :mod:`radflow.data.rle`.

Torch-free: the serving runtime imports this module.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from radflow.data.masks import pack, restore_mask
from radflow.data.rle import decode_rle, encode_rle, rle_counts
from radflow.runtime.cam import encode_png

__all__ = [
    "DEFAULT_THRESHOLD",
    "PALETTE",
    "bounding_box",
    "decode_rle",
    "encode_label_png",
    "encode_mask_png",
    "encode_rle",
    "original_masks",
    "rle_counts",
    "structure_answers",
]

DEFAULT_THRESHOLD = 0.5
"""Probability at or above which a pixel belongs to a structure."""
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)
"""RGB colour of structure k in the label PNG (Sasha Trubetskoy's distinct colours); overlaps mix them."""


def original_masks(maps: np.ndarray, height: int, width: int, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Model-size maps ``(K, S, S)`` to boolean masks ``(K, height, width)`` of the input.

    Probability maps are resampled bilinearly and then thresholded (``>= threshold``), which keeps
    the boundary smooth; boolean or integer masks are resampled nearest-neighbour (non-zero = in).
    """
    maps = np.asarray(maps)
    restored = restore_mask(maps, height, width)
    if np.issubdtype(maps.dtype, np.floating):
        return restored >= threshold
    return restored.astype(bool, copy=False)


def bounding_box(mask: np.ndarray) -> list[int] | None:
    """COCO bounding box ``[x, y, width, height]`` in pixels of a 2-D mask; ``None`` when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def structure_answers(
    masks: np.ndarray, structures: Sequence[str], spacing: tuple[float, float] | None = None
) -> list[dict[str, Any]]:
    """One answer per structure of masks ``(K, h, w)`` at the input's size.

    Each is ``{"structure", "area_px", "area_mm2", "bbox", "rle"}``: ``area_mm2`` needs ``spacing``
    (row, column) in mm, else it is ``None``; ``bbox`` is COCO ``[x, y, width, height]`` or ``None``
    for an empty mask; ``rle`` is :func:`encode_rle`'s.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] != len(structures):
        raise ValueError(f"masks {masks.shape} must be (K, h, w) with K = {len(structures)} structures.")
    pixel_mm2 = None if spacing is None else float(spacing[0]) * float(spacing[1])
    answers = []
    for name, mask in zip(structures, masks, strict=True):
        area = int(np.count_nonzero(mask))
        answers.append(
            {
                "structure": name,
                "area_px": area,
                "area_mm2": None if pixel_mm2 is None else round(area * pixel_mm2, 3),
                "bbox": bounding_box(mask),
                "rle": encode_rle(mask),
            }
        )
    return answers


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A black/white (0/255) 8-bit PNG of one structure's 2-D mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D (h, w), got shape {mask.shape}.")
    return encode_png(mask.astype(bool, copy=False).view(np.uint8) * np.uint8(255))


def _palette(n_structures: int) -> list[int]:
    """Flat RGB palette of the 256 bit combinations of up to 8 structures: each the mean of its structures' colours."""
    colours = np.asarray(PALETTE[:n_structures], dtype=np.float64)
    bits = (np.arange(256)[:, None] >> np.arange(n_structures)) & 1
    with np.errstate(invalid="ignore"):
        mixed = (bits @ colours) / bits.sum(axis=1, keepdims=True)
    return np.nan_to_num(mixed).round().astype(np.uint8).reshape(-1).tolist()


def encode_label_png(masks: np.ndarray) -> bytes:
    """One PNG of all structures ``(K, h, w)``: pixel value = packed structure bits (bit k = structure k).

    Up to 8 structures it is a palette PNG (index 0 transparent, each structure its
    :data:`PALETTE` colour, overlaps mixed), so a viewer shows it and a program reads exact bits;
    up to 16 a 16-bit grey PNG of the same values. PNG holds no wider integers.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"label PNG masks are (K, h, w), got shape {masks.shape}.")
    k = masks.shape[0]
    if k > 16:
        raise ValueError(f"a label PNG holds at most 16 structures, got {k}; ask for one structure's PNG instead.")
    packed = pack(masks)
    if k > 8:
        return encode_png(packed.astype(np.uint16, copy=False))
    from PIL import Image

    image = Image.fromarray(packed)  # an "L" image; the palette makes it "P"
    image.putpalette(_palette(k))
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=0, compress_level=1)
    return out.getvalue()
