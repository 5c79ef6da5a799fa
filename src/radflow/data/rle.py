"""COCO run-length encoding of masks, both directions, checked.

COCO RLE, as pycocotools writes it: the mask is read column by column (Fortran order) as
alternating runs of 0 and 1, starting with a (possibly empty) run of 0. The compact string stores
each count (from the fourth on, as the difference to the count two before) in 5-bit groups, least
significant first, one character (``48 + group``, bit 0x20 = more groups follow) per group. Both
directions are vectorised NumPy here, so the server needs no C extension and checks what it decodes
(a count string running past the image is a :class:`~radflow.errors.DataError`, not a buffer overrun).

NumPy and OpenCV only: the serving runtime's answers and the segmentation kind's feedback checks share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from radflow.errors import DataError

__all__ = ["decode_rle", "encode_rle", "rle_counts"]

# Counts are at most h*w < 2**32 and deltas are above -2**32: 7 groups of 5 bits hold every value.
_MAX_GROUPS = 7


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
