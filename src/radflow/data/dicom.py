"""DICOM radiographs: the decode chain from stored values to display grey levels, and a writer.

:func:`decode_dicom` is what :func:`radflow.data.decode.decode_image` calls for DICOM bytes. It
applies the grey-scale pipeline of DICOM PS3.4 N.2 in the standard's order — stored values
(unused high bits masked, signed values sign-extended), Modality LUT (rescale or LUT sequence),
VOI (window or LUT sequence), then MONOCHROME1 inversion — so every image reaches the model the way
a reading workstation would display it, whichever vendor, photometric interpretation or transfer
syntax produced it. It returns non-identifying attributes in ``meta`` and the raw identifiers
separately, for ingest to hash; nothing identifying is ever put in ``meta``.

:func:`write_dicom` writes a deterministic Part-10 DX/CR file; the synthetic-data generator and the
tests use it to make phantom radiographs, compressed or not.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from radflow.data.decoded import DEFAULT_MAX_PIXELS, DecodedImage
from radflow.errors import ConfigError, ImageDecodeError, did_you_mean

__all__ = [
    "WRITABLE_TRANSFER_SYNTAXES",
    "decode_dicom",
    "header_attributes",
    "header_identifiers",
    "parse_age",
    "pixel_spacing",
    "write_dicom",
]

_DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
_CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
_MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")

WRITABLE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
)
"""Transfer syntaxes :func:`write_dicom` encodes (JPEG-LS needs the ``pyjpegls`` package)."""

_ROBUST_PERCENTILES = (0.5, 99.5)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")
_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_YEAR = 365.25
_AGE_UNIT_YEARS = {"Y": 1.0, "": 1.0, "M": 1.0 / 12.0, "W": 7.0 / _DAYS_PER_YEAR, "D": 1.0 / _DAYS_PER_YEAR}
_PROJECTION_ALIASES = {"LATERAL": "LL", "LAT": "LL", "LEFT LATERAL": "LL", "RIGHT LATERAL": "RL"}
_FRONTAL = {"PA", "AP"}
_LATERAL = {"LL", "RL"}


# --------------------------------------------------------------------------------------------- decode


def decode_dicom(data: bytes, name: str = "<upload>", max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode one single-frame DICOM radiograph to float32 grey levels in [0, 1], 0 = black.

    The chain follows the standard's order: stored values (pydicom masks unused high bits and
    sign-extends when Pixel Representation is 1), Modality LUT (Rescale Slope/Intercept, or the
    Modality LUT Sequence), VOI (the first VOI LUT Sequence item, or the first Window Center/Width
    pair with VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID; the LUT is preferred when both are
    present, as pydicom does, because it is the vendor's own rendering), then inversion for MONOCHROME1.

    Normalisation to [0, 1]: when the file has a VOI transform, by the VOI's *output range* (a
    window maps onto [0, 1]; a VOI LUT by its declared output bit depth), never by the image's own
    min/max, so the contrast the modality chose is kept and two images with the same window compare
    directly. Without a VOI, by robust limits of the modality values — the 0.5th and 99.5th
    percentiles, values outside clipped — so a few hot or dead detector pixels or a collimator
    border do not squash the anatomy into a few grey levels. RGB and YBR images are reduced to
    luminance (ITU-R BT.601 weights) scaled by the stored bit depth.

    ``name`` is used only in error messages. Every failure raises :class:`ImageDecodeError`; the
    pixel count (Rows x Columns) is checked against ``max_pixels`` before any pixel is decoded.
    """
    ds = _parse(data, name)
    _check_decodable(ds, name, max_pixels)
    arr = _stored_values(ds, name)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric in _MONOCHROME:
        try:
            pixels = _grey_chain(arr, ds, photometric == "MONOCHROME1")
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
            raise ImageDecodeError(
                f"invalid Modality LUT or VOI attributes ({type(exc).__name__}: {exc}); the file's grey-scale "
                "transform cannot be applied",
                path=name,
            ) from None
    else:
        pixels = _luminance(arr, int(ds.BitsStored))
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        format="dicom",
        bits=int(ds.BitsStored),
        meta=header_attributes(ds, photometric),
        identifiers=header_identifiers(ds),
    )


def _parse(data: bytes, name: str) -> Dataset:
    try:
        # force=False: bytes without the 'DICM' marker are not DICOM, whatever they contain.
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise ImageDecodeError(f"not a valid DICOM file ({exc})", path=name) from None
    except Exception as exc:  # pydicom raises many types on corrupt headers; all mean the same here
        raise ImageDecodeError(
            f"not a valid DICOM file: corrupt or truncated header ({type(exc).__name__}: {exc})", path=name
        ) from None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(str(uid)) if uid else ExplicitVRLittleEndian


def _no_pixel_data_reason(ds: Dataset) -> str:
    sop_class = UID(str(ds.get("SOPClassUID", "")).strip())
    known = sop_class.is_valid and sop_class.name != str(sop_class)
    if "Rows" in ds or (known and "Image" in sop_class.name):
        # An image object whose Pixel Data element never arrived: the file was cut short.
        return (
            "DICOM without pixel data: the file declares an image but ends before its Pixel Data element "
            "(truncated file?); copy or export it again"
        )
    what = (
        f"a {sop_class.name} object" if known else "a non-image object such as a structured report, or a truncated file"
    )
    return f"DICOM without pixel data ({what}); radflow needs an image such as a DX or CR radiograph"


def _check_decodable(ds: Dataset, name: str, max_pixels: int) -> None:
    if "PixelData" not in ds:
        raise ImageDecodeError(_no_pixel_data_reason(ds), path=name)
    missing = [kw for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored") if ds.get(kw) in (None, "")]
    if missing:
        raise ImageDecodeError(f"DICOM image lacks required attribute(s) {', '.join(missing)}", path=name)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > max_pixels:
        raise ImageDecodeError(
            f"image is {cols}x{rows} = {rows * cols:,} pixels, above the limit of {max_pixels:,}", path=name
        )
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise ImageDecodeError(
            f"multi-frame DICOM ({int(frames)} frames) is not supported: radflow expects one projection "
            "radiograph per file; split the frames into separate files",
            path=name,
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _MONOCHROME + _COLOUR:
        raise ImageDecodeError(
            f"unsupported photometric interpretation {photometric or '(missing)'!r}; radflow decodes "
            "MONOCHROME1, MONOCHROME2, RGB and YBR_* images",
            path=name,
        )
    if photometric in _MONOCHROME and int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageDecodeError(f"{photometric} image with SamplesPerPixel {ds.SamplesPerPixel}; expected 1", path=name)


def _stored_values(ds: Dataset, name: str) -> np.ndarray:
    ts = _transfer_syntax(ds)
    try:
        # pydicom's decoders mask unused high bits and sign-extend signed data (BitsStored <
        # BitsAllocated), and convert YBR to RGB, so ``arr`` holds the standard's stored values.
        arr: np.ndarray = ds.pixel_array
    except Exception as exc:  # decoder plugins raise arbitrary types on corrupt codestreams
        compressed = ts.is_transfer_syntax and ts.is_compressed
        if (compressed or not ts.is_transfer_syntax) and isinstance(exc, RuntimeError | NotImplementedError):
            # pydicom says which plugin packages are missing; keep its words after ours.
            raise ImageDecodeError(
                f"no decoder available for transfer syntax {ts.name!r} ({ts}): {' '.join(str(exc).split())} "
                "radflow's dependencies pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg and pylibjpeg-rle decode "
                "JPEG, JPEG-LS, JPEG 2000 and RLE; reinstall them",
                path=name,
            ) from None
        raise ImageDecodeError(
            f"corrupt or truncated pixel data (transfer syntax {ts.name!r}): "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            path=name,
        ) from None
    expected = 2 if int(ds.get("SamplesPerPixel", 1)) == 1 else 3
    if arr.ndim != expected:
        raise ImageDecodeError(f"unexpected decoded pixel shape {arr.shape}", path=name)
    return arr


def _first(value: Any) -> float:
    """The first of a possibly multi-valued DS/IS element (Window Center/Width may hold several)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI windowing onto [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    # LINEAR (also the default for an unrecognised function): width counts pixel centres, hence -1.
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _lut_entries(item: Dataset, ds: Dataset, count: int) -> np.ndarray:
    data = item.LUTData
    if isinstance(data, bytes):  # VR OW: raw words (or, from some writers, one byte per entry)
        if len(data) == count:
            return np.frombuffer(data, dtype=np.uint8)
        big = _transfer_syntax(ds) == ExplicitVRBigEndian
        return np.frombuffer(data, dtype=">u2" if big else "<u2", count=count)
    return np.asarray(data if isinstance(data, MultiValue | list) else [data], dtype=np.int64)


def _voi_lut(modality: np.ndarray, item: Dataset, ds: Dataset) -> np.ndarray:
    """A VOI LUT Sequence item applied to modality values, scaled by its declared output range.

    Done here rather than with ``pydicom.pixels.apply_voi_lut``, which (pydicom 3.0) indexes an
    8-bit LUT with 8-bit indices, so inputs above 255 wrap around, and wants integer input.
    """
    count, first, bits = (int(v) for v in item.LUTDescriptor)
    count = count or 2**16  # 0 encodes 65536 entries
    if first > 2**15 - 1 and modality.min() < 0:
        first -= 2**16  # the descriptor's second value is SS when the input values are signed
    lut = _lut_entries(item, ds, count).astype(np.float64)
    index = np.clip(np.round(modality).astype(np.int64) - first, 0, len(lut) - 1)
    # The standard's output range is 2**bits - 1; some writers under-declare bits, so never clip data.
    out_max = max(float(2**bits - 1), float(lut.max()), 1.0)
    return lut[index] / out_max


def _voi(modality: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """VOI output in [0, 1], or None when the file has no usable VOI transform."""
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        return _voi_lut(modality, voi_seq[0], ds)
    if ds.get("WindowCenter") in (None, "") or ds.get("WindowWidth") in (None, ""):
        return None
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        return None  # an invalid window is treated as absent rather than rendering a blank image
    if function == "LINEAR" and width < 1:
        return None
    return _window(modality, center, width, function)


def _robust_unit(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, _ROBUST_PERCENTILES)
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _grey_chain(arr: np.ndarray, ds: Dataset, invert: bool) -> np.ndarray:
    modality = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    unit = _voi(modality, ds)
    if unit is None:
        unit = _robust_unit(modality)
    # Presentation: MONOCHROME1 shows its minimum as white; radflow always means 0 = black.
    return 1.0 - unit if invert else unit


def _luminance(rgb: np.ndarray, bits_stored: int) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114])
    return np.clip((rgb.astype(np.float64) @ weights) / float(2**bits_stored - 1), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- meta


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def parse_age(value: str) -> float | None:
    """A DICOM Age String ("045Y", "006M", "010W", "003D") in years, or None if absent or malformed."""
    m = _AGE_RE.match(value or "")
    if not m:
        return None
    return int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]


def _projection(ds: Dataset) -> str:
    raw = _text(ds, "ViewPosition").upper()
    return _PROJECTION_ALIASES.get(raw, raw)


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: ``PixelSpacing``, else ``ImagerPixelSpacing``; None if unknown.

    A missing, malformed or non-positive value is unknown rather than an error: distances and areas
    are then given in pixels.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, column = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and column > 0 and math.isfinite(row) and math.isfinite(column):
            return row, column
    return None


def header_attributes(ds: Dataset, photometric: str) -> dict[str, Any]:
    """The decoded image's ``meta``: only non-identifying, model-relevant attributes (names, dates and
    institutions never enter)."""
    sex = _text(ds, "PatientSex").upper()
    projection = _projection(ds)
    view = "frontal" if projection in _FRONTAL else "lateral" if projection in _LATERAL else ""
    return {
        "sex": sex if sex in ("M", "F") else "",
        "age": parse_age(_text(ds, "PatientAge")),
        "projection": projection,
        "view": view,
        "modality": _text(ds, "Modality").upper(),
        "photometric": photometric,
        "bits_stored": int(ds.BitsStored),
        "transfer_syntax": str(_transfer_syntax(ds)),
        "spacing": pixel_spacing(ds),
    }


def header_identifiers(ds: Dataset) -> dict[str, str]:
    """Raw identifiers for ingest to hash; a key is present only when the file has a value."""
    found = {
        "patient_id": _text(ds, "PatientID"),
        "study_uid": _text(ds, "StudyInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
    }
    return {k: v for k, v in found.items() if v}


# ---------------------------------------------------------------------------------------------- write


def _check_stored(stored: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    if not 1 <= bits_stored <= 16:
        raise ConfigError(f"bits_stored must be between 1 and 16, got {bits_stored}")
    want_ndim = 3 if photometric == "RGB" else 2
    if stored.ndim != want_ndim or (photometric == "RGB" and stored.shape[-1] != 3):
        shape = "(rows, columns, 3)" if photometric == "RGB" else "(rows, columns)"
        raise ConfigError(f"stored must have shape {shape} for {photometric}, got {stored.shape}")
    if stored.size == 0:
        raise ConfigError("stored is empty")
    if not np.issubdtype(stored.dtype, np.integer):
        raise ConfigError(f"stored must hold integers (stored values), got dtype {stored.dtype}")
    lo, hi = int(stored.min()), int(stored.max())
    if lo < 0 or hi > 2**bits_stored - 1:
        raise ConfigError(
            f"stored values span [{lo}, {hi}], outside [0, {2**bits_stored - 1}] for bits_stored={bits_stored}"
        )
    return np.ascontiguousarray(stored, dtype="<u2")


def write_dicom(
    path: str | Path,
    stored: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    attributes: dict[str, Any] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    uid_seed: str = "",
) -> None:
    """Write a Part-10 DX image file (CR or MR when ``attributes["Modality"]`` says so).

    An MR image carries its stored values as they are (``rescale_*`` must stay 1 and 0); its
    MR-specific elements (ScanningSequence, EchoTime, ImageOrientationPatient, ...) come in ``attributes``.

    ``stored`` holds unsigned stored values (shape (rows, columns), or (rows, columns, 3) for RGB),
    written as 16-bit words with BitsStored ``bits_stored`` and HighBit ``bits_stored - 1``.
    ``window`` is (center, width). ``attributes`` adds or overrides elements by keyword (PatientID,
    PatientName, PatientSex, PatientAge, ViewPosition, StudyInstanceUID, ...). The bytes depend only
    on the arguments: UIDs derive from ``uid_seed`` and no current date or time is written.
    ``transfer_syntax`` is one of :data:`WRITABLE_TRANSFER_SYNTAXES`; compression goes through
    pydicom's encoders (pylibjpeg-rle, pylibjpeg-openjpeg, pyjpegls).
    """
    photometric = photometric.strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise ConfigError(
            f"photometric must be MONOCHROME1, MONOCHROME2 or RGB, got {photometric!r}."
            + did_you_mean(photometric, ["MONOCHROME1", "MONOCHROME2", "RGB"])
        )
    ts = UID(str(transfer_syntax))
    if ts not in WRITABLE_TRANSFER_SYNTAXES:
        names = {UID(u).name: u for u in WRITABLE_TRANSFER_SYNTAXES}
        raise ConfigError(
            f"cannot write transfer syntax {ts.name or ts!r}; choose one of {', '.join(names)}."
            + did_you_mean(ts.name, names)
        )
    pixels = _check_stored(np.asarray(stored), bits_stored, photometric)
    attributes = dict(attributes or {})
    unknown = [kw for kw in attributes if kw not in keyword_dict]
    if unknown:
        raise ConfigError(
            f"unknown DICOM keyword {unknown[0]!r} in attributes." + did_you_mean(unknown[0], keyword_dict)
        )

    modality = str(attributes.get("Modality", "DX")).upper()
    sop_class = {"CR": _CR_IMAGE, "MR": _MR_IMAGE}.get(modality, _DX_FOR_PRESENTATION)
    mr = modality == "MR"  # MR Image: stored values as they are (no rescale, no Presentation LUT)
    if mr and (rescale_slope != 1.0 or rescale_intercept != 0.0):
        raise ConfigError("an MR image has no rescale: write its values as stored (rescale_slope 1, intercept 0).")
    sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = modality
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if not mr:  # an MR image's orientation is its ImageOrientationPatient (attributes)
        ds.PatientOrientation = ""
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if photometric != "RGB" and mr:
        if window is not None:
            ds.WindowCenter = f"{window[0]:g}"
            ds.WindowWidth = f"{window[1]:g}"
    elif photometric != "RGB":
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleType = "US"
        # DX IOD: the Presentation LUT Shape restates the photometric interpretation's polarity.
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        if window is not None:
            ds.WindowCenter = f"{window[0]:g}"
            ds.WindowWidth = f"{window[1]:g}"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()

    if ts != ExplicitVRLittleEndian:
        try:
            ds.compress(ts, generate_instance_uid=False)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot encode {ts.name} ({exc})") from None
    ds.save_as(Path(path), enforce_file_format=True)
