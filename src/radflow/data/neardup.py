"""Perceptual near-duplicate check: is an image a re-encoded, re-exposed, noisy or blurred copy of an indexed one?

Content hashes (sha256 of the bytes) see a PNG re-encoding, an 8-bit conversion of a DICOM or a
brightness shift as a new image, so they cannot keep held-out films out of training data that
comes back from a service. This module compares what the model sees instead: the preprocessed
``uint8`` square of :func:`radflow.data.preprocess.prepare_pixels`. Exact copies are found by
:func:`pixel_digest`; altered ones by a DCT perceptual hash (pHash) and a Hamming threshold.

The hash: the image is resampled to 32 x 32 and standardised (zero mean, unit spread, so brightness
and contrast drop out until clipping), the index's mean image is subtracted, an orthonormal 2-D
DCT-II is taken, and the 8 x 8 lowest frequencies except the DC term (63 coefficients) become one
bit each: above or below their median. Blur and noise mostly touch the higher frequencies left out.

Why subtract the mean image: radiographs of one body part share one anatomy, and the classic pHash
hashes mostly that shared template. On radflow's phantom chest films distinct patients' classic
hashes are a median 14 bits apart and some are identical, so any threshold that catches drifted
copies also matches almost every pair; the residual (what makes this film this patient's) is what
separates them. The price is weaker recall on drifts that clip much of the film (a darkening that
turns the lungs pure black). Measured figures are in :data:`DEFAULT_THRESHOLD`'s docstring; the
check is a second line of defence behind identity (patient and study ids), not a proof.

NumPy and OpenCV only (the DCT is two small matrix products).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "HASH_BITS",
    "Match",
    "NearDuplicateIndex",
    "hamming",
    "phash",
    "pixel_digest",
    "standardised",
]

_SIDE = 32
_LOW = 8
HASH_BITS = _LOW * _LOW - 1
"""Bits per hash: the 8 x 8 lowest DCT frequencies without the DC term."""
DEFAULT_THRESHOLD = 6
"""Hamming distance (of 63 bits) at or below which an image counts as a near-duplicate of an indexed one.

Measured on 300 phantom chest films (160 patients) preprocessed to 128 px, each copy compared
with all 300 (``tests/data/test_neardup.py`` keeps floors under these):

* recall, the share of drifted copies matched to their original: 100 % for PNG/8-bit re-encoding
  and contrast 0.7, 100 % blur 1.5 px, 99.7 % noise 0.05, 91 % brightness +0.3, 98 % for
  brightness 0.3 + contrast 0.7 + noise 0.05 + blur 1.5 together, but 5 % for brightness -0.3
  (it clips the lungs to black);
* false matches: 0.05 % of pairs of distinct patients' films (11 % of films have at least one
  look-alike among the other 299: phantoms share one template far more than real patients do).

At 32 px (the tests' tiny workspaces) drift wipes out most of what tells phantoms apart: recall
falls to 92 % for brightness +0.3, 72 % for noise 0.05, 23 % for blur 1.5 and 2 % for the four
drifts together, with 0.02 % false matches. Pixel copies are found at any size.
"""


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` (``C @ x`` transforms a column vector)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(_SIDE)
_WEIGHTS = np.left_shift(np.uint64(1), np.arange(HASH_BITS, dtype=np.uint64))
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _batch(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    batch = arr[None] if arr.ndim == 2 else arr
    if batch.ndim != 3 or batch.dtype != np.uint8:
        raise ValueError(
            f"near-duplicate hashing expects uint8 (H, W) or (N, H, W) images, got {arr.dtype} {arr.shape}."
        )
    return batch


def standardised(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32) float64: each image area-resampled to 32 x 32, with zero mean and unit standard deviation."""
    import cv2

    batch = _batch(images)
    n, h, w = batch.shape
    if h % _SIDE == 0 and w % _SIDE == 0:
        x = batch.astype(np.float64).reshape(n, _SIDE, h // _SIDE, _SIDE, w // _SIDE).mean(axis=(2, 4))
    else:
        interp = cv2.INTER_AREA if min(h, w) > _SIDE else cv2.INTER_LINEAR
        x = np.stack([cv2.resize(img.astype(np.float64), (_SIDE, _SIDE), interpolation=interp) for img in batch])
    x = x - x.mean(axis=(1, 2), keepdims=True)
    spread = x.std(axis=(1, 2), keepdims=True)
    return np.divide(x, spread, out=np.zeros_like(x), where=spread > 1e-9)


def phash(images: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """Perceptual hashes of ``images`` (one (H, W) or a batch (N, H, W), grey ``uint8``), one uint64 each.

    ``template``: a (32, 32) mean of :func:`standardised` images subtracted first (``None``: nothing, the
    classic pHash of a standardised image). Bit ``j`` is set when DCT coefficient ``j`` is above the median.
    """
    x = standardised(images)
    if template is not None:
        x = x - template
    coeffs = _DCT @ x @ _DCT.T
    low = coeffs[:, :_LOW, :_LOW].reshape(len(x), -1)[:, 1:]  # no DC term: brightness lives there only
    bits = low > np.median(low, axis=1, keepdims=True)
    return (bits.astype(np.uint64) * _WEIGHTS).sum(axis=1, dtype=np.uint64)


def hamming(a: np.ndarray | int, b: np.ndarray) -> np.ndarray:
    """Bits that differ between hash(es) ``a`` and hashes ``b`` (broadcast like ``a ^ b``)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    as_bytes = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
    return _POPCOUNT8[as_bytes].sum(axis=-1, dtype=np.int64)


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of preprocessed pixels (shape and values): equal exactly when the model sees the same image."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha256(str(arr.shape).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Match:
    """The indexed image a query copies: its position in the index and the bits that differ (0 for a pixel copy)."""

    row: int
    distance: int
    exact: bool


class NearDuplicateIndex:
    """Hashes of a set of preprocessed images; :meth:`find` says which one a query copies, if any.

    The template (mean standardised image) is the index's own, so it follows the body part and the
    preprocessing of the images indexed. Held-out sets are small enough (tens of thousands) for a
    vectorised linear scan per query: XOR and popcount over 50,000 hashes take about a millisecond.
    """

    def __init__(self, images: np.ndarray, threshold: int = DEFAULT_THRESHOLD, batch: int = 2048):
        if not 0 <= threshold < HASH_BITS:
            raise ValueError(f"near-duplicate threshold must be between 0 and {HASH_BITS - 1} bits, got {threshold}.")
        self.threshold = threshold
        n = len(images)
        total = np.zeros((_SIDE, _SIDE))
        for start in range(0, n, batch):  # in chunks: a memory-mapped split need not fit in memory as floats
            total += standardised(np.asarray(images[start : start + batch])).sum(axis=0)
        self.template = total / max(n, 1)
        parts = [phash(np.asarray(images[s : s + batch]), self.template) for s in range(0, n, batch)]
        self.hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        self._exact = {pixel_digest(np.asarray(images[i])): i for i in range(n)}

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, pixels: np.ndarray) -> Match | None:
        """The indexed image ``pixels`` copies (the same pixels, or within the threshold), else None."""
        exact = self._exact.get(pixel_digest(pixels))
        if exact is not None:
            return Match(exact, 0, True)
        if not len(self.hashes):
            return None
        distances = hamming(phash(pixels, self.template)[0], self.hashes)
        best = int(np.argmin(distances))
        if distances[best] <= self.threshold:
            return Match(best, int(distances[best]), False)
        return None
