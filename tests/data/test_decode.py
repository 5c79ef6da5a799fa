"""The shared image decode path: PNG/JPEG via Pillow, sniffing, DICOM dispatch and refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radflow.data.decode import decode_file, decode_image, sniff_format
from radflow.data.dicom import write_dicom
from radflow.errors import ImageDecodeError

H, W = 48, 64


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _grey8() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return ((xx * 4 + yy) % 256).astype(np.uint8)


def test_png_8_bit_is_scaled_by_255() -> None:
    grey = _grey8()
    out = decode_image(_png(grey), name="a.png")
    assert (out.format, out.bits, out.pixels.dtype, out.pixels.shape) == ("png", 8, np.float32, (H, W))
    np.testing.assert_allclose(out.pixels, grey / 255.0, atol=1e-7)
    assert out.meta == {} and out.identifiers == {}


def test_png_16_bit_keeps_full_precision() -> None:
    grey = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 21).astype(np.uint16)  # 0..64491
    out = decode_image(_png(grey), name="a16.png")
    assert out.bits == 16
    np.testing.assert_allclose(out.pixels, grey / 65535.0, atol=1e-7)
    # neighbouring 16-bit values stay distinct (no silent reduction to 8 bits)
    assert len(np.unique(out.pixels)) == H * W


def test_colour_png_becomes_grey() -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = decode_image(_png(rgb), name="red.png")
    assert out.pixels.shape == (H, W)
    np.testing.assert_allclose(out.pixels, 76 / 255.0, atol=1 / 255)  # ITU-R 601 luma of pure red


def test_jpeg_decodes_close_to_source() -> None:
    grey = np.repeat(np.linspace(0, 255, W, dtype=np.float64)[None, :], H, axis=0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=95)
    out = decode_image(buf.getvalue(), name="a.jpg")
    assert (out.format, out.bits, out.pixels.shape) == ("jpeg", 8, (H, W))
    assert np.abs(out.pixels - grey / 255.0).max() < 4 / 255


def test_sniffing_uses_bytes_not_names(tmp_path: Path) -> None:
    png = _png(_grey8())
    write_dicom(tmp_path / "x.dcm", _grey8().astype(np.uint16), bits_stored=8)
    dicom = (tmp_path / "x.dcm").read_bytes()
    assert sniff_format(png) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0" + b"\0" * 10) == "jpeg"
    assert sniff_format(dicom) == "dicom"
    assert sniff_format(b"DICM" + b"\0" * 200) is None  # marker in the wrong place (no preamble)
    assert sniff_format(b"GIF89a") is None
    # a PNG named .jpg and a DICOM named .png are decoded as what they are
    assert decode_image(png, name="mislabelled.jpg").format == "png"
    assert decode_image(dicom, name="mislabelled.png").format == "dicom"


def test_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match=r"^empty\.png: empty file \(0 bytes\)") as info:
        decode_image(b"", name="empty.png")
    assert info.value.status_code == 422


def test_unknown_format_names_what_is_accepted() -> None:
    with pytest.raises(ImageDecodeError, match=r"^x\.gif: not a PNG, JPEG or DICOM file"):
        decode_image(b"GIF89a" + b"\0" * 100, name="x.gif")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_png(keep: float) -> None:
    data = _png(np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=r"^cut\.png: corrupt or truncated PNG image"):
        decode_image(data[: int(len(data) * keep)], name="cut.png")


def test_truncated_jpeg() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)).save(buf, format="JPEG")
    with pytest.raises(ImageDecodeError, match=r"^cut\.jpg: corrupt or truncated JPEG image"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], name="cut.jpg")


def test_oversize_image_is_refused_before_decoding() -> None:
    data = _png(_grey8())
    with pytest.raises(ImageDecodeError, match=r"^big\.png: image is 64x48 = 3,072 pixels, above the limit of 3,000"):
        decode_image(data, name="big.png", max_pixels=3000)
    # the header alone is enough: a truncated body still reports the size problem
    with pytest.raises(ImageDecodeError, match=r"above the limit"):
        decode_image(data[:60], name="big.png", max_pixels=3000)
    assert decode_image(data, max_pixels=H * W).pixels.shape == (H, W)


def test_decode_file_reads_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    path.write_bytes(_png(_grey8()))
    assert decode_file(path).pixels.shape == (H, W)
    with pytest.raises(ImageDecodeError, match=r"missing\.png: image file not found"):
        decode_file(tmp_path / "missing.png")
