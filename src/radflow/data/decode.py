"""Image bytes to grey levels: the one decode path for ingest, batch scoring and the server.

Sniffs the format from the bytes (not the file name or Content-Type, which lie), decodes
PNG/JPEG with Pillow and DICOM with :mod:`radflow.data.dicom`, refuses images above a pixel
limit (decompression bombs) or beyond an aspect-ratio limit (padding bombs: a 1x120000 strip pads
to a 57 GB square) from the size their header declares, before decoding them, and returns a 2-D float32 image in
[0, 1] with 0 = black, ready for :func:`radflow.data.preprocess.prepare_pixels`.
Every failure is an :class:`~radflow.errors.ImageDecodeError` whose message suits a 4xx answer.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from radflow.data.decoded import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, DecodedImage, check_size
from radflow.errors import ImageDecodeError

__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "check_size",
    "decode_file",
    "decode_image",
    "sniff_format",
]


def sniff_format(data: bytes) -> str | None:
    """ "png", "jpeg", "dicom" or None, from the leading bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def _to_unit(arr: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, 8
    if arr.dtype in (np.uint16, np.int32, np.int16):
        # 16-bit PNGs often use fewer bits (12-bit detectors); scale by the container range.
        return arr.astype(np.float32) / 65535.0, 16
    if arr.dtype == np.bool_:
        return arr.astype(np.float32), 1
    raise ImageDecodeError(f"unsupported pixel type {arr.dtype}", path=name)


def _decode_raster(data: bytes, name: str, max_pixels: int, max_aspect_ratio: float | None, fmt: str) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size  # from the header: nothing is decompressed yet
            check_size(w, h, name, max_pixels, max_aspect_ratio)
            if img.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                img = img.convert("L")
            elif img.mode == "I;16B":
                img = img.convert("I;16")
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image too large to decode safely ({exc})", path=name) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated {fmt.upper()} image ({exc})", path=name) from None
    arr = np.asarray(img)
    if img.mode == "I":
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    if arr.ndim != 2:
        raise ImageDecodeError(f"expected a grey-level image, got shape {arr.shape}", path=name)
    pixels, bits = _to_unit(arr, name)
    return DecodedImage(pixels=pixels, format=fmt, bits=bits)


def decode_image(
    data: bytes,
    name: str = "<upload>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> DecodedImage:
    """Decode PNG, JPEG or DICOM bytes; ``name`` is only used in error messages.

    ``max_pixels`` and ``max_aspect_ratio`` (None: no limit) are checked against the declared size
    before any pixel is decompressed.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)", path=name)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(
            "not a PNG, JPEG or DICOM file (unrecognised leading bytes; a DICOM file needs its "
            "128-byte preamble and 'DICM' marker)",
            path=name,
        )
    if fmt == "dicom":
        from radflow.data.dicom import decode_dicom

        decoded = decode_dicom(data, name=name, max_pixels=max_pixels)
        # decode_dicom bounds the pixel count before decoding, so this check of the shape costs nothing
        h, w = decoded.pixels.shape
        check_size(w, h, name, max_pixels, max_aspect_ratio)
        return decoded
    return _decode_raster(data, name, max_pixels, max_aspect_ratio, fmt)


def decode_file(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> DecodedImage:
    """Read and decode one image file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("image file not found", path=path) from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image file ({exc.strerror})", path=path) from None
    return decode_image(data, name=str(path), max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
