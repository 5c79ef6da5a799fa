"""Masks in answers: a model's maps back at the input's size, COCO RLE, area, bounding box and PNGs.

A segmentation answer describes each structure at the input's original resolution (the pad-to-square
resize undone by :func:`radflow.data.masks.restore_mask`): its area in pixels and, when the pixel
spacing is known, mm^2; its bounding box; and the mask itself as COCO run-length encoding, the
compact form every COCO tool reads (``{"size": [h, w], "counts": "..."}``, the string of
``pycocotools.mask.encode``). The PNGs are for people and viewers: one structure as black/white, or
all of them in one label image whose pixel values are the packed structure bits of
:func:`radflow.data.masks.pack` (exact, overlaps kept) with a colour palette.

COCO RLE, as pycocotools writes it: the mask is read column by column (Fortran order) as
alternating runs of 0 and 1, starting with a (possibly empty) run of 0. The compact string stores
each count (from the fourth on, as the difference to the count two before) in 5-bit groups, least
significant first, one character (``48 + group``, bit 0x20 = more groups follow) per group. Both
directions are vectorised NumPy here, so the server needs no C extension and checks what it decodes
(a count string running past the image is a :class:`~radflow.errors.DataError`, not a buffer overrun).

Torch-free: the serving runtime imports this module.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from radflow.data.masks import pack, restore_mask
from radflow.errors import DataError
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
# Counts are at most h*w < 2**32 and deltas are above -2**32: 7 groups of 5 bits hold every value.
_MAX_GROUPS = 7


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


def rle_counts(mask: np.ndarray) -> np.ndarray:
    """COCO's uncompressed counts of a 2-D mask: column-major runs of 0 and 1, starting with 0s."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D (h, w), got shape {mask.shape}.")
    # The transpose's C order is the mask's column order. OpenCV transposes in cache-sized tiles,
    # several times faster than NumPy's strided copy at 1024 px.
    flat = cv2.transpose(np.ascontiguousarray(mask.astype(bool, copy=False)).view(np.uint8)).reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds)
    if flat.size and flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int64)


def _counts_to_string(counts: np.ndarray) -> str:
    x = counts.astype(np.int64)
    if x.size > 3:
        x[3:] -= counts[1:-2]
    groups = np.ones(x.size, dtype=np.int64)
    for k in range(1, _MAX_GROUPS):
        limit = 1 << (5 * k - 1)
        groups += (x < -limit) | (x >= limit)
    width = int(groups.max()) if x.size else 0
    j = np.arange(width)
    digits = (x[:, None] >> (5 * j)) & 0x1F
    digits |= np.where(j < groups[:, None] - 1, 0x20, 0)
    return (digits[j < groups[:, None]] + 48).astype(np.uint8).tobytes().decode("ascii")


def _string_to_counts(text: str, what: str) -> np.ndarray:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise DataError(f"{what}: RLE counts must be ASCII characters '0'..'o', got {text[:40]!r}.") from None
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero((c < 0) | (c > 63))
    if bad.size:
        raise DataError(f"{what}: RLE counts hold {chr(raw[bad[0]])!r} at {int(bad[0])}; COCO uses '0'..'o'.")
    ends = np.flatnonzero((c & 0x20) == 0)
    if ends.size == 0 or ends[-1] != c.size - 1:
        raise DataError(f"{what}: the RLE counts string is truncated (its last value is unfinished).")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_GROUPS:
        raise DataError(f"{what}: an RLE count of {int(lengths.max())} characters is larger than any image.")
    position = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * position), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    counts = x.copy()
    counts[1::2] = np.cumsum(x[1::2])
    counts[2::2] = np.cumsum(x[2::2])
    return counts


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compact RLE of a 2-D mask: ``{"size": [h, w], "counts": str}``, as ``pycocotools.mask.encode``."""
    counts = rle_counts(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _counts_to_string(counts)}


def decode_rle(rle: Mapping[str, Any], what: str = "mask") -> np.ndarray:
    """A boolean ``(h, w)`` mask from COCO RLE, compact (string/bytes counts) or uncompressed (integer counts).

    ``what`` names the mask in errors (a field, a file and row). Counts must cover the image exactly.
    """
    size = rle.get("size")
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise DataError(f"{what}: RLE 'size' must be [height, width] of positive integers, got {size!r}.")
    h, w = int(size[0]), int(size[1])
    raw = rle.get("counts")
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if isinstance(raw, str):
        counts = _string_to_counts(raw, what)
    elif isinstance(raw, np.ndarray) and raw.ndim == 1 and np.issubdtype(raw.dtype, np.integer):
        counts = raw.astype(np.int64)
    elif isinstance(raw, Sequence) and all(isinstance(v, int) for v in raw):
        counts = np.asarray(raw, dtype=np.int64).reshape(-1)
    else:
        raise DataError(f"{what}: RLE 'counts' must be a COCO string or a list of integers, got {type(raw).__name__}.")
    if counts.size and counts.min() < 0:
        raise DataError(f"{what}: RLE count {int(counts.min())} is negative.")
    total = int(counts.sum())
    if total != h * w:
        runs = "runs past" if total > h * w else "stops short of"
        raise DataError(f"{what}: RLE covers {total} pixels and {runs} the {h} x {w} image ({h * w} pixels).")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.ascontiguousarray(np.repeat(values, counts).reshape(w, h).T)


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
