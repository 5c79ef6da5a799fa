"""Segmentation masks inside radflow: structures as bits of one integer per pixel, on the image's geometry.

A dataset of task ``segmentation`` declares its structures (``dataset.json`` ``masks.structures``,
e.g. ``["Left Lung", "Right Lung", "Heart"]``) and keeps one mask per image in memory-mappable
shards beside the pixel shards (``masks/masks-00000.npy``, same shard and offset as the image).
Structure ``k`` is bit ``k`` of the pixel's value, so structures may overlap (a nodule inside a
lung field) while a mask still costs one byte per pixel for up to eight structures
(:func:`mask_dtype`).

Geometry: :func:`prepare_mask` does to a mask exactly what
:func:`radflow.data.preprocess.prepare_pixels` does to its image (long side capped at
``MAX_PAD_SIDE``, centred zero padding to a square, resampling to the training size), with
nearest-neighbour resampling so label values are never blended. :func:`restore_mask` is the
inverse for serving: a model-size map back to the input's original height and width.

Torch-free: the serving runtime imports this module.
"""

from __future__ import annotations

import cv2
import numpy as np

from radflow.data.preprocess import pad_geometry, pad_to_square
from radflow.errors import DataError

__all__ = ["MASK_DIR", "MAX_STRUCTURES", "mask_dtype", "pack", "prepare_mask", "restore_mask", "unpack"]

MASK_DIR = "masks"
"""Sub-directory of a dataset holding the mask shards (``masks-NNNNN.npy``)."""
MAX_STRUCTURES = 32
_DTYPES = ((8, np.uint8), (16, np.uint16), (32, np.uint32))


def mask_dtype(n_structures: int) -> np.dtype:
    """The smallest unsigned integer type with a bit per structure (uint8 up to 8, uint16, uint32)."""
    if n_structures < 1:
        raise DataError("a segmentation dataset needs at least one structure.")
    for bits, dtype in _DTYPES:
        if n_structures <= bits:
            return np.dtype(dtype)
    raise DataError(f"{n_structures} structures declared; radflow keeps at most {MAX_STRUCTURES} per dataset.")


def pack(masks: np.ndarray) -> np.ndarray:
    """Boolean masks ``(..., K, H, W)`` to one integer per pixel ``(..., H, W)`` (bit k = structure k)."""
    masks = np.asarray(masks)
    if masks.ndim < 3:
        raise ValueError(f"pack expects (..., K, H, W) masks, got shape {masks.shape}.")
    k = masks.shape[-3]
    dtype = mask_dtype(k)
    out = np.zeros(masks.shape[:-3] + masks.shape[-2:], dtype=dtype)
    for i in range(k):
        out |= masks[..., i, :, :].astype(bool).astype(dtype) << dtype.type(i)
    return out


def unpack(bits: np.ndarray, n_structures: int) -> np.ndarray:
    """Packed masks ``(..., H, W)`` to booleans ``(..., K, H, W)``."""
    bits = np.asarray(bits)
    shifts = np.arange(n_structures, dtype=bits.dtype).reshape(n_structures, 1, 1)
    return ((bits[..., None, :, :] >> shifts) & 1).astype(bool)


def prepare_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A packed (or label/binary) 2-D mask at its image's original size to ``size`` x ``size``.

    The same pad-to-square geometry as :func:`~radflow.data.preprocess.prepare_pixels`, nearest
    neighbour throughout; the dtype is kept.
    """
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"prepare_mask expects a non-empty 2-D mask, got shape {mask.shape}.")
    dtype = mask.dtype
    geometry = pad_geometry(*mask.shape)
    work = pad_to_square(_cv_safe(mask), geometry, cv2.INTER_NEAREST_EXACT)
    if geometry.side != size:
        work = cv2.resize(work, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.asarray(work).astype(dtype, copy=False)


def restore_mask(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Model-size maps ``(K, S, S)`` (probabilities or masks) back to the input's ``(K, height, width)``.

    Undoes :func:`prepare_mask`: resample ``S`` to the padded side (bilinear for float maps, nearest
    for integer/boolean ones), crop the centred padding, and, for inputs whose long side exceeded
    ``MAX_PAD_SIDE``, resample to the original size.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"restore_mask expects (K, S, S) maps, got shape {maps.shape}.")
    if height < 1 or width < 1:
        raise ValueError(f"restore_mask needs a positive size, got {height} x {width}.")
    is_float = np.issubdtype(maps.dtype, np.floating)
    dtype = maps.dtype
    work = maps.astype(np.float32) if is_float else _cv_safe(maps)
    interp = cv2.INTER_LINEAR if is_float else cv2.INTER_NEAREST_EXACT
    g = pad_geometry(height, width)
    out = np.empty((maps.shape[0], height, width), dtype=work.dtype)
    for k in range(maps.shape[0]):
        plane = work[k]
        if plane.shape[0] != g.side:
            plane = cv2.resize(plane, (g.side, g.side), interpolation=interp)
        plane = plane[g.top : g.top + g.height, g.left : g.left + g.width]
        if (g.height, g.width) != (height, width):
            plane = cv2.resize(plane, (width, height), interpolation=interp)
        out[k] = plane
    return out.astype(dtype, copy=False)


def _cv_safe(array: np.ndarray) -> np.ndarray:
    """A view or copy OpenCV resamples exactly: booleans as uint8, integers wider than 16 bits as float64."""
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype.itemsize >= 4:
        return array.astype(np.float64)
    return array
