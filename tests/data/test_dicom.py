"""DICOM decode chain and writer: order of LUTs, polarity, compression, bit masking, bad files, PHI."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from radflow.data.decode import decode_image
from radflow.data.dicom import decode_dicom, parse_age, write_dicom
from radflow.errors import ConfigError, ImageDecodeError

H, W = 48, 64
PHI = {
    "PatientID": "MRN-0042",
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19700101",
    "InstitutionName": "St Elsewhere General",
    "PatientSex": "F",
    "PatientAge": "045Y",
    "ViewPosition": "PA",
}


def _ramp(bits: int = 12) -> np.ndarray:
    """A smooth 64x48 phantom with values spanning most of the stored range."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = (xx / (W - 1) * 0.7 + yy / (H - 1) * 0.3) * (2**bits - 1)
    return np.round(img).astype(np.uint16)


def _write(tmp_path: Path, stored: np.ndarray, name: str = "img.dcm", **kwargs: Any) -> bytes:
    kwargs.setdefault("bits_stored", 12)
    path = tmp_path / name
    write_dicom(path, stored, **kwargs)
    return path.read_bytes()


def _rewrite(data: bytes, edit: Any) -> bytes:
    """Parse, let ``edit`` change the dataset (things write_dicom refuses to write), serialise."""
    ds = pydicom.dcmread(io.BytesIO(data))
    edit(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ------------------------------------------------------------------------------------- decode chain

# Stored values 100, 600, 1100, 1600 with slope 2, intercept -1000 give modality values -800, 200,
# 1200, 2200; the window (center 700) is in modality units, so applying it to stored values (wrong
# order) would give different numbers. MONOCHROME1 then inverts the window output.
_STORED = np.array([100, 600, 1100, 1600], dtype=np.uint16)
_CHAIN_CASES = {
    # LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped
    "LINEAR": ((700, 2001), [0.0, 0.25025, 0.75025, 1.0]),
    # LINEAR_EXACT: (x - c) / w + 0.5, clipped
    "LINEAR_EXACT": ((700, 2000), [0.0, 0.25, 0.75, 1.0]),
    # SIGMOID: 1 / (1 + exp(-4 (x - c) / w))
    "SIGMOID": ((700, 2000), [0.0474259, 0.2689414, 0.7310586, 0.9525741]),
}


@pytest.mark.parametrize("function", list(_CHAIN_CASES))
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_modality_then_voi_then_inversion(tmp_path: Path, function: str, photometric: str) -> None:
    window, voi_out = _CHAIN_CASES[function]
    stored = np.tile(np.repeat(_STORED, W // 4), (H, 1))
    data = _write(
        tmp_path,
        stored,
        photometric=photometric,
        rescale_slope=2.0,
        rescale_intercept=-1000.0,
        window=window,
        attributes={"VOILUTFunction": function},
    )
    out = decode_dicom(data, name="chain.dcm")
    expected = np.array(voi_out) if photometric == "MONOCHROME2" else 1.0 - np.array(voi_out)
    assert out.pixels.dtype == np.float32 and out.pixels.shape == (H, W)
    np.testing.assert_allclose(out.pixels[0, :: W // 4], expected, atol=1e-6)


def test_first_of_multiple_windows_is_used(tmp_path: Path) -> None:
    stored = np.tile(np.repeat(_STORED, W // 4), (H, 1))
    data = _write(
        tmp_path,
        stored,
        attributes={"WindowCenter": [1100, 40], "WindowWidth": [2000, 80], "VOILUTFunction": "LINEAR_EXACT"},
    )
    out = decode_dicom(data)
    # No rescale, so the first window (1100, 2000) sees the stored values; the second would saturate.
    np.testing.assert_allclose(out.pixels[0, :: W // 4], [0.0, 0.25, 0.5, 0.75], atol=1e-6)


def test_voi_lut_sequence_normalised_by_its_output_range(tmp_path: Path) -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 8]
    lut.add_new("LUTData", "US", [min(255, i // 8) for i in range(4096)])
    stored = _ramp()
    data = _write(tmp_path, stored, window=(9999, 10), attributes={"VOILUTSequence": [lut]})
    out = decode_dicom(data)
    # The LUT wins over the (deliberately absurd) window and 255 maps to 1.0, not the image maximum.
    np.testing.assert_allclose(out.pixels, np.minimum(255, stored // 8) / 255.0, atol=1e-6)


def test_modality_lut_sequence_feeds_the_window(tmp_path: Path) -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "US"
    lut.add_new("LUTData", "US", [4095 - i for i in range(4096)])  # a LUT that reverses the values

    def use_lut(ds: Dataset) -> None:
        del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
        ds.ModalityLUTSequence = [lut]

    stored = _ramp()
    data = _write(tmp_path, stored, window=(2048, 4096), attributes={"VOILUTFunction": "LINEAR_EXACT"})
    out = decode_dicom(_rewrite(data, use_lut))
    np.testing.assert_allclose(out.pixels, (4095 - stored) / 4096, atol=1e-6)


def test_without_voi_a_hot_pixel_does_not_darken_the_image(tmp_path: Path) -> None:
    stored = (1000 + _ramp(10)).astype(np.uint16)  # body in 1000..2023
    stored[0, 0] = 4095  # one saturated detector element
    out = decode_dicom(_write(tmp_path, stored))
    body = out.pixels[1:, 1:]
    assert out.pixels[0, 0] == pytest.approx(1.0)
    assert body.max() > 0.98 and body.min() < 0.02  # the anatomy uses the full grey range


@pytest.mark.parametrize(
    ("window", "function"),
    [(None, "LINEAR"), ((1500.0, 2001.0), "LINEAR"), ((1500.0, 2000.0), "LINEAR_EXACT")],
)
def test_monochrome1_and_monochrome2_decode_identically(
    tmp_path: Path, window: tuple[float, float] | None, function: str
) -> None:
    top = 2**12 - 1
    mono2 = _ramp()
    mono1 = (top - mono2).astype(np.uint16)
    window1 = None
    if window is not None:
        # LINEAR's window is centred on c - 0.5, so its mirror image is centred one step higher.
        shift = 1.0 if function == "LINEAR" else 0.0
        window1 = (top - window[0] + shift, window[1])
    attrs = {"VOILUTFunction": function}
    a = decode_dicom(_write(tmp_path, mono2, "a.dcm", window=window, attributes=attrs))
    b = decode_dicom(_write(tmp_path, mono1, "b.dcm", photometric="MONOCHROME1", window=window1, attributes=attrs))
    assert a.pixels.std() > 0.1  # not trivially equal
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-6)
    # 0 = black: the darkest stored MONOCHROME2 corner is the brightest MONOCHROME1 one, and both read 0.
    assert b.pixels[0, 0] == pytest.approx(0.0, abs=1e-6)


_LOSSLESS = [RLELossless, JPEG2000Lossless]
if importlib.util.find_spec("jpeg_ls") is not None:
    _LOSSLESS.append(JPEGLSLossless)


@pytest.mark.parametrize("transfer_syntax", _LOSSLESS, ids=lambda ts: ts.name)
def test_lossless_syntaxes_decode_identically(tmp_path: Path, transfer_syntax: str) -> None:
    stored = np.random.default_rng(0).integers(0, 4096, (H, W)).astype(np.uint16)
    plain = _write(tmp_path, stored, "plain.dcm", window=(2048, 4096))
    packed = _write(tmp_path, stored, "packed.dcm", window=(2048, 4096), transfer_syntax=transfer_syntax)
    assert pydicom.dcmread(io.BytesIO(packed)).file_meta.TransferSyntaxUID == transfer_syntax
    a, b = decode_dicom(plain), decode_dicom(packed)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert b.meta["transfer_syntax"] == transfer_syntax


def test_jpeg_baseline_decodes_through_plugin(tmp_path: Path) -> None:
    grey = np.round(_ramp(8)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=95)

    def to_jpeg(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    data = _rewrite(_write(tmp_path, grey, bits_stored=8, window=(128, 256)), to_jpeg)
    data = _rewrite(data, lambda ds: setattr(ds, "VOILUTFunction", "LINEAR_EXACT"))
    out = decode_dicom(data)
    # window (128, 256) LINEAR_EXACT maps x to x / 256; lossy JPEG is within a few grey levels.
    np.testing.assert_allclose(out.pixels, grey / 256.0, atol=4 / 256)


def test_missing_decoder_plugin_names_the_transfer_syntax(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write(tmp_path, _ramp(), transfer_syntax=JPEG2000Lossless)
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("numpy", "pylibjpeg", "pylibjpeg-openjpeg")})
    with pytest.raises(ImageDecodeError, match=r"^j2k\.dcm: .*JPEG 2000.*pylibjpeg-openjpeg"):
        decode_dicom(data, name="j2k.dcm")


def test_12_of_16_bits_ignores_garbage_in_high_bits(tmp_path: Path) -> None:
    stored = _ramp()
    clean = _write(tmp_path, stored, window=(2048, 4096))
    garbage = np.random.default_rng(1).integers(0, 16, stored.shape).astype(np.uint16) << 12
    dirty = _rewrite(clean, lambda ds: setattr(ds, "PixelData", (stored | garbage).astype("<u2").tobytes()))
    assert pydicom.dcmread(io.BytesIO(dirty), force=True).PixelData != pydicom.dcmread(io.BytesIO(clean)).PixelData
    np.testing.assert_array_equal(decode_dicom(dirty).pixels, decode_dicom(clean).pixels)


def test_signed_12_bit_values_are_sign_extended(tmp_path: Path) -> None:
    values = np.array([-1000, 0, 1000, 1500], dtype=np.int16)
    words = (np.tile(np.repeat(values, W // 4), (H, 1)).astype(np.int32) & 0x0FFF) | 0xA000  # junk high bits

    def signed(ds: Dataset) -> None:
        ds.PixelRepresentation = 1
        ds.VOILUTFunction = "LINEAR_EXACT"
        ds.PixelData = words.astype("<u2").tobytes()

    data = _rewrite(_write(tmp_path, _ramp(), window=(0, 4000)), signed)
    out = decode_dicom(data)
    np.testing.assert_allclose(out.pixels[0, :: W // 4], [0.25, 0.5, 0.75, 0.875], atol=1e-6)


def test_rgb_is_reduced_to_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint16)
    rgb[:, : W // 2] = 200  # grey: luminance equals the channel value
    rgb[:, W // 2 :, 0] = 255  # pure red
    out = decode_dicom(_write(tmp_path, rgb, bits_stored=8, photometric="RGB"))
    assert out.pixels.shape == (H, W)
    np.testing.assert_allclose(out.pixels[0, [0, -1]], [200 / 255, 0.299], atol=1e-6)


# ----------------------------------------------------------------------------------------- bad files


def _no_pixels(ds: Dataset) -> None:
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PhotometricInterpretation"):
        delattr(ds, kw)


def _palette(ds: Dataset) -> None:
    ds.PhotometricInterpretation = "PALETTE COLOR"


def _multiframe(ds: Dataset) -> None:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_no_pixels, r"DICOM without pixel data \(a Basic Text SR"),
        (_palette, r"unsupported photometric interpretation 'PALETTE COLOR'"),
        (_multiframe, r"multi-frame .*not supported.*one projection radiograph per file"),
    ],
    ids=["no-pixel-data", "palette-color", "multi-frame"],
)
def test_unsupported_objects_are_refused_by_name(tmp_path: Path, edit: Any, message: str) -> None:
    data = _rewrite(_write(tmp_path, _ramp()), edit)
    with pytest.raises(ImageDecodeError, match=r"^bad\.dcm: " + message) as info:
        decode_image(data, name="bad.dcm")
    assert info.value.status_code == 422


def test_truncated_files_are_reported_as_truncated(tmp_path: Path) -> None:
    data = _write(tmp_path, _ramp())
    pixel_start = len(data) - H * W * 2
    for cut in (pixel_start + 100, len(data) - 1, pixel_start - 40, 300):
        with pytest.raises(ImageDecodeError, match=r"^cut\.dcm: .*truncated"):
            decode_dicom(data[:cut], name="cut.dcm")


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("data", [b"hello, world" * 20, b"\0" * 128 + b"DICM" + b"\xff" * 64], ids=["text", "junk"])
def test_not_dicom_bytes(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match=r"^x\.bin: .*(not a valid DICOM|truncated)"):
        decode_dicom(data, name="x.bin")


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    data = _write(tmp_path, _ramp())
    truncated = data[:-100]  # would fail as corrupt pixel data if decoding were attempted first
    with pytest.raises(ImageDecodeError, match=r"^big\.dcm: image is 64x48 = 3,072 pixels, above the limit of 3,071"):
        decode_dicom(truncated, name="big.dcm", max_pixels=H * W - 1)
    assert decode_dicom(data, max_pixels=H * W).pixels.shape == (H, W)


# ------------------------------------------------------------------------------------------ meta, PHI


def test_meta_holds_demographics_and_view_but_no_phi(tmp_path: Path) -> None:
    out = decode_image(_write(tmp_path, _ramp(), attributes=PHI, uid_seed="s1"), name="phi.dcm")
    assert out.format == "dicom" and out.bits == 12
    assert out.meta["sex"] == "F" and out.meta["age"] == 45.0
    assert out.meta["projection"] == "PA" and out.meta["view"] == "frontal"
    assert out.meta["modality"] == "DX" and out.meta["photometric"] == "MONOCHROME2"
    flat = repr(out.meta)
    for secret in ("Doe", "Jane", "19700101", "Elsewhere", "MRN-0042"):
        assert secret not in flat
    assert out.identifiers["patient_id"] == "MRN-0042"
    assert set(out.identifiers) == {"patient_id", "study_uid", "sop_instance_uid"}


@pytest.mark.parametrize(
    ("position", "projection", "view"),
    [("AP", "AP", "frontal"), ("LATERAL", "LL", "lateral"), ("RL", "RL", "lateral"), ("", "", "")],
)
def test_view_from_view_position(tmp_path: Path, position: str, projection: str, view: str) -> None:
    out = decode_dicom(_write(tmp_path, _ramp(), attributes={"ViewPosition": position, "PatientSex": "O"}))
    assert (out.meta["projection"], out.meta["view"], out.meta["sex"]) == (projection, view, "")


@pytest.mark.parametrize(
    ("text", "years"),
    [("045Y", 45.0), ("006M", 0.5), ("010W", 70 / 365.25), ("003D", 3 / 365.25), ("", None), ("abc", None)],
)
def test_parse_age(text: str, years: float | None) -> None:
    assert parse_age(text) == (None if years is None else pytest.approx(years))


def test_missing_age_is_none(tmp_path: Path) -> None:
    assert decode_dicom(_write(tmp_path, _ramp())).meta["age"] is None


# --------------------------------------------------------------------------------------------- writer


def test_write_is_deterministic_and_valid_part10(tmp_path: Path) -> None:
    first = _write(tmp_path, _ramp(), "a.dcm", attributes=PHI, uid_seed="seed", transfer_syntax=RLELossless)
    again = _write(tmp_path, _ramp(), "b.dcm", attributes=PHI, uid_seed="seed", transfer_syntax=RLELossless)
    other = _write(tmp_path, _ramp(), "c.dcm", attributes=PHI, uid_seed="other")
    assert first == again
    assert first[128:132] == b"DICM"
    ds, ds_other = pydicom.dcmread(io.BytesIO(first)), pydicom.dcmread(io.BytesIO(other))
    assert ds.SOPInstanceUID != ds_other.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID.name == "Digital X-Ray Image Storage - For Presentation"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.PatientName == "Doe^Jane" and "StudyDate" not in ds


def test_write_cr_uses_cr_storage_class(tmp_path: Path) -> None:
    ds = pydicom.dcmread(io.BytesIO(_write(tmp_path, _ramp(), attributes={"Modality": "CR"})))
    assert ds.SOPClassUID.name == "Computed Radiography Image Storage"


def test_write_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"outside \[0, 255\]"):
        write_dicom(tmp_path / "x.dcm", _ramp(), bits_stored=8)
    with pytest.raises(ConfigError, match=r"'PatientNme'.*Did you mean 'PatientName'"):
        write_dicom(tmp_path / "x.dcm", _ramp(), bits_stored=12, attributes={"PatientNme": "x"})
    with pytest.raises(ConfigError, match=r"MONOCHROME2"):
        write_dicom(tmp_path / "x.dcm", _ramp(), bits_stored=12, photometric="MONOCHROM2")
    with pytest.raises(ConfigError, match=r"cannot write transfer syntax"):
        write_dicom(tmp_path / "x.dcm", _ramp(), bits_stored=12, transfer_syntax=JPEGBaseline8Bit)
    assert not (tmp_path / "x.dcm").exists()
