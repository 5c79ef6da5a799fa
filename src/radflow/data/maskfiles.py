"""Masks in the formats users have, to and from boolean arrays at the image's original size.

Codecs, each an exact inverse pair (a round trip gives back the same pixels):

* SIIM-ACR pneumothorax RLE (``train-rle.csv``'s ``EncodedPixels``): the competition's
  ``mask_functions.py``. Pixels are counted column-major (down each column, then the next column);
  pairs are ``offset length``, where the first offset is the 0-based index of the first masked
  pixel and every later offset is the count of unmasked pixels since the previous run ended; ``-1``
  is an empty mask. Several rows for one image are unioned by the reader.
* COCO segmentation: polygons (rasterised by pycocotools, as COCO's own tools do) and RLE, both
  uncompressed (``counts`` a list) and compressed (``counts`` a string); written as compressed RLE.
* Label Studio brush RLE (the ``rle`` list of a ``brushlabels`` result): Label Studio's own format,
  thi.ng rle-pack over the image's RGBA bytes row by row; a pixel is in the mask when its alpha is
  non-zero, as Label Studio's editor exports it.
* PNG/TIFF mask files: binary (non-zero = in), label-index (value k = structure k, 0 background) or
  one binary file per structure.
* DICOM SEG (highdicom): segments are structures, matched by SegmentLabel; each SEG names the
  source instance it annotates by SOPInstanceUID.

:class:`MaskSpec` says where one image's mask comes from before its image is decoded (a source
reader makes it; the ingest worker calls :func:`load_mask` with the decoded image's size).
Errors are :class:`~radflow.errors.DataError` with messages free of paths and identifiers, since
ingest writes them into ``dataset.json``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from radflow.errors import DataError, did_you_mean

__all__ = [
    "MaskSpec",
    "SegMask",
    "coco_decode",
    "coco_encode",
    "label_studio_decode",
    "label_studio_encode",
    "label_studio_masks",
    "label_studio_result",
    "load_mask",
    "masks_from_label_image",
    "read_dicom_seg",
    "read_mask_image",
    "siim_decode",
    "siim_encode",
    "siim_runs",
    "write_mask_png",
]

SIIM_EMPTY = "-1"
MASK_SUFFIXES = (".png", ".tif", ".tiff")
_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


# ---------------------------------------------------------------------------------------- SIIM RLE


def siim_encode(mask: np.ndarray) -> str:
    """A 2-D mask to SIIM-ACR ``EncodedPixels`` (``-1`` when empty)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()  # column-major, as mask_functions.py counts
    edges = np.diff(np.concatenate([[0], flat.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(starts) == 0:
        return SIIM_EMPTY
    offsets = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{o} {n}" for o, n in zip(offsets.tolist(), (ends - starts).tolist(), strict=True))


def siim_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """SIIM-ACR ``EncodedPixels`` to a boolean ``(height, width)`` mask; ``-1`` is empty.

    Raises DataError for text that is not pairs of non-negative integers and for runs that go past
    the image's ``height * width`` pixels (an RLE written for another image size).
    """
    total = height * width
    if str(encoded).strip() == SIIM_EMPTY:
        return np.zeros((height, width), dtype=bool)
    offsets, lengths = siim_runs(encoded)
    ends = np.cumsum(offsets + lengths)
    begins = ends - lengths
    if ends[-1] > total:
        raise DataError(
            f"EncodedPixels runs past the image: it reaches pixel {int(ends[-1])} of a {width}x{height} image "
            f"({total} pixels); was it encoded for another image size?"
        )
    flat = np.zeros(total + 1, dtype=np.int32)
    np.add.at(flat, begins, 1)
    np.add.at(flat, ends, -1)
    return (np.cumsum(flat[:-1]) > 0).reshape(width, height).T


def siim_runs(encoded: str) -> tuple[np.ndarray, np.ndarray]:
    """The (offsets, lengths) of SIIM-ACR ``EncodedPixels`` (empty for ``-1``); DataError for malformed text."""
    text = str(encoded).strip()
    if text == SIIM_EMPTY:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        values = np.array([int(token) for token in text.split()], dtype=np.int64)
    except ValueError:
        raise DataError(f"EncodedPixels must be integer pairs or -1, got {text[:40]!r}") from None
    if len(values) == 0:
        raise DataError("EncodedPixels is blank; write -1 for an image without the structure")
    if len(values) % 2 or (values < 0).any():
        raise DataError(f"EncodedPixels must be pairs of non-negative integers (offset length), got {text[:40]!r}")
    return values[0::2], values[1::2]


# -------------------------------------------------------------------------------------------- COCO


def coco_encode(mask: np.ndarray) -> dict[str, Any]:
    """A 2-D mask to a COCO compressed RLE (``{"size": [h, w], "counts": str}``, JSON-ready)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, or RLE with list or string counts) to a boolean mask.

    An RLE sized for another image is refused with both sizes in the message.
    """
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        polygons = [list(map(float, p)) for p in segmentation if isinstance(p, list | tuple)]
        if len(polygons) != len(segmentation) or not polygons:
            raise DataError("COCO segmentation must be a list of polygons [x1, y1, x2, y2, ...] or an RLE object")
        bad = [p for p in polygons if len(p) < 6 or len(p) % 2]
        if bad:
            raise DataError(f"COCO polygon needs at least 3 (x, y) points, got {len(bad[0])} numbers")
        rles = coco_mask.frPyObjects(polygons, height, width)
        return _coco_pixels(coco_mask.merge(rles))
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise DataError("COCO segmentation must be polygons or an RLE object with 'size' and 'counts'")
    size = [int(v) for v in segmentation["size"]]
    if size != [height, width]:
        raise DataError(f"COCO RLE is {size[1]}x{size[0]} (width x height) but its image is {width}x{height}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if sum(int(c) for c in counts) != height * width:
            raise DataError(
                f"COCO RLE counts cover {sum(int(c) for c in counts)} pixels, not the {height * width} of a "
                f"{width}x{height} image"
            )
        rle = coco_mask.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, height, width)
    else:
        rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    try:
        return _coco_pixels(rle)
    except (ValueError, TypeError) as exc:
        raise DataError(f"COCO RLE cannot be decoded ({exc})") from None


def _coco_pixels(rle: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as coco_mask

    with warnings.catch_warnings():
        # pycocotools' decoder predates NumPy 2's copy keyword and says so on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.asarray(coco_mask.decode(rle), dtype=bool)


# ----------------------------------------------------------------------------- Label Studio brush


_LS_RUN_BITS = (3, 4, 8, 16)
_LS_WORD = 8


def label_studio_encode(mask: np.ndarray) -> list[int]:
    """A 2-D mask to a Label Studio brush ``rle`` list (rle-pack over RGBA bytes, 255 inside, 0 outside)."""
    values = np.repeat(np.asarray(mask, dtype=bool).ravel().astype(np.uint8) * 255, 4)
    header = f"{len(values):032b}{_LS_WORD - 1:05b}" + "".join(f"{n - 1:04b}" for n in _LS_RUN_BITS)
    bounds = np.flatnonzero(np.diff(values.astype(np.int16))) + 1
    starts = np.concatenate([[0], bounds])
    lengths = np.diff(np.concatenate([starts, [len(values)]]))
    parts = [header]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        value = f"{int(values[start]):08b}"
        while length > 0:
            chunk = min(length, 1 << 16)
            size = next(i for i, bits in enumerate(_LS_RUN_BITS) if chunk - 1 < 1 << bits)
            parts.append(f"1{size:02b}{chunk - 1:0{_LS_RUN_BITS[size]}b}{value}")
            length -= chunk
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def label_studio_decode(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """A Label Studio brush ``rle`` list to a boolean ``(height, width)`` mask (alpha > 0 is inside)."""
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise DataError("Label Studio rle must be a list of byte values 0-255") from None
    bits = "".join(f"{b:08b}" for b in data)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise DataError("Label Studio rle ends in the middle of a run (truncated)")
        value = int(bits[pos : pos + n], 2) if n else 0
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if num != height * width * 4:
        raise DataError(
            f"Label Studio rle holds {num} values, but a {width}x{height} image needs {height * width * 4} "
            "(4 per pixel, RGBA); it was drawn on an image of another size"
        )
    out = np.zeros(num, dtype=np.uint32)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > num:
            raise DataError(f"Label Studio rle runs past the image's {num} values")
        if repeat:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out.reshape(height, width, 4)[:, :, 3] > 0


def label_studio_result(
    mask: np.ndarray, label: str, *, from_name: str = "tag", to_name: str = "image"
) -> dict[str, Any]:
    """One Label Studio ``brushlabels`` result (prediction or annotation) holding ``mask`` for ``label``."""
    height, width = np.asarray(mask).shape
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": label_studio_encode(mask), "brushlabels": [label]},
    }


def label_studio_masks(results: list[dict[str, Any]], structures: list[str]) -> np.ndarray:
    """The ``brushlabels`` results of one Label Studio annotation to masks ``(K, H, W)`` over ``structures``.

    A result's labels name its structures (several results of one label unite); other result types
    are ignored. Every brush result must have the same original size; a label that is not a
    structure is an error with a did-you-mean hint.
    """
    brushes = [r for r in results if str(r.get("type", "")).lower() == "brushlabels"]
    if not brushes:
        raise DataError("the annotation has no brushlabels result (a Label Studio brush mask)")
    sizes = {(int(r["original_height"]), int(r["original_width"])) for r in brushes if "original_height" in r}
    if len(sizes) != 1:
        raise DataError(f"brush results must share one original_width/original_height, got {sorted(sizes)}")
    ((height, width),) = sizes
    out = np.zeros((len(structures), height, width), dtype=bool)
    for result in brushes:
        value = result.get("value", {})
        labels = value.get("brushlabels") or []
        if value.get("format", "rle") != "rle" or "rle" not in value or not labels:
            raise DataError("a brushlabels result needs value.format 'rle', value.rle and value.brushlabels")
        mask = label_studio_decode(value["rle"], height, width)
        for name in labels:
            if name not in structures:
                hint = did_you_mean(name, structures)
                raise DataError(f"brush label {name!r} is not one of the structures {structures}.{hint}")
            out[structures.index(name)] |= mask
    return out


# ---------------------------------------------------------------------------------------- PNG/TIFF


def read_mask_image(data: bytes | Path) -> np.ndarray:
    """A PNG/TIFF mask file to its integer values ``(H, W)`` (palette PNGs give their indices).

    Colour masks are refused: their colours are not label indices.
    """
    try:
        raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read mask file ({exc.strerror})") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.mode not in _MASK_MODES:
                raise DataError(
                    f"mask image has mode {img.mode} (colour); save masks as grey or palette images whose values "
                    "are 0 (background), 1..K (label index) or 0/255 (binary)"
                )
            img.load()
            values = np.asarray(img)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"mask file is not a readable PNG/TIFF image ({exc})") from None
    if values.ndim != 2:
        raise DataError(f"mask image must be 2-D, got shape {values.shape}")
    return values.astype(np.uint8) if values.dtype == np.bool_ else values


def masks_from_label_image(values: np.ndarray, n_structures: int) -> np.ndarray:
    """Label indices ``(H, W)`` (0 background, k = structure k) to booleans ``(K, H, W)``.

    With one structure any non-zero value is inside (binary masks are often 0/255).
    """
    if n_structures == 1:
        return (values != 0)[None]
    top = int(values.max()) if values.size else 0
    if top > n_structures:
        raise DataError(
            f"label index {top} in the mask is above the {n_structures} declared structures "
            "(index k is the k-th line of structures.txt; 0 is background)"
        )
    return values[None, :, :] == np.arange(1, n_structures + 1, dtype=values.dtype)[:, None, None]


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a binary mask as a 0/255 grey PNG (or integer label indices below 256 as they are)."""
    import cv2

    values = np.asarray(mask)
    img = values.astype(np.uint8) * 255 if values.dtype == np.bool_ else values.astype(np.uint8)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - only invalid arrays fail
        raise DataError("PNG encoding of the mask failed", path=path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buf.tobytes())


# ---------------------------------------------------------------------------------------- DICOM SEG


@dataclass(frozen=True)
class SegMask:
    """What a DICOM SEG holds for one source image: its SOPInstanceUID, segment labels and masks (K, H, W)."""

    source_uid: str
    labels: tuple[str, ...]
    masks: np.ndarray = field(repr=False)


def read_dicom_seg(data: bytes | Path) -> SegMask:
    """Read a DICOM SEG that annotates one 2-D source image (highdicom); segments in segment-number order."""
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        raw = data if isinstance(data, bytes) else Path(data).read_bytes()
        ds = pydicom.dcmread(io.BytesIO(raw))
    except (InvalidDicomError, OSError) as exc:
        raise DataError(f"not a readable DICOM file ({exc})") from None
    if str(ds.get("Modality", "")) != "SEG":
        raise DataError(f"DICOM file is modality {ds.get('Modality', '?')}, not a segmentation (SEG)")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        sources = {uid for _, _, uid in seg.get_source_image_uids()}
        if len(sources) != 1:
            raise DataError(f"DICOM SEG references {len(sources)} source images; radflow reads one SEG per image")
        (source,) = sources
        numbers = list(seg.segment_numbers)
        labels = tuple(str(seg.get_segment_description(n).segment_label) for n in numbers)
        pixels = seg.get_pixels_by_source_instance(
            [source], segment_numbers=numbers, combine_segments=False, assert_missing_frames_are_empty=True
        )
    except DataError:
        raise
    except (AttributeError, KeyError, ValueError, RuntimeError) as exc:
        raise DataError(f"DICOM SEG cannot be read ({exc})") from None
    masks = np.moveaxis(np.asarray(pixels[0]) > 0, -1, 0)
    return SegMask(source_uid=str(source), labels=labels, masks=masks)


# ---------------------------------------------------------------------------------- one image's mask


@dataclass(frozen=True)
class MaskSpec:
    """Where one image's mask comes from, read once its image's size is known (in the ingest worker).

    ``kind`` is ``siim`` (``items``: (structure, EncodedPixels) rows), ``coco`` ((structure,
    segmentation) annotations), ``files`` ((structure, path) binary files; structure -1: one
    label-index or binary file for all), or ``seg`` ((-1, path) of a DICOM SEG whose segment labels
    map to structures by name). Structures in ``annotated`` are known (present or absent); the
    others are not annotated for this image (their label is NaN). ``required`` lists structures
    whose annotation must hold pixels (an empty COCO annotation, an RLE that encodes nothing).
    """

    kind: str
    items: tuple[tuple[int, Any], ...]
    structures: tuple[str, ...]
    annotated: tuple[int, ...]
    required: tuple[int, ...] = ()
    size: tuple[int, int] | None = None
    """(height, width) the annotation declares (COCO's image entry), checked against the image."""
    keep: tuple[int, ...] | None = None
    """Structures (indices into ``structures``) the mask is narrowed to, in output order; None: all."""

    @property
    def outputs(self) -> tuple[str, ...]:
        """The structures :func:`load_mask` returns, in order."""
        return self.structures if self.keep is None else tuple(self.structures[k] for k in self.keep)

    def annotated_outputs(self) -> list[bool]:
        """For each output structure, whether this image's annotation covers it (else its label is NaN)."""
        indices = range(len(self.structures)) if self.keep is None else self.keep
        return [k in self.annotated for k in indices]


def load_mask(spec: MaskSpec, height: int, width: int) -> np.ndarray:
    """The image's masks ``(K, height, width)``, K = ``spec.outputs``; several annotations of a structure unite."""
    if spec.size is not None and tuple(spec.size) != (height, width):
        declared = f"{spec.size[1]}x{spec.size[0]}"
        raise DataError(f"the annotation is for a {declared} image but its image is {width}x{height} (width x height)")
    k = len(spec.structures)
    out = np.zeros((k, height, width), dtype=bool)
    for structure, item in spec.items:
        if spec.kind == "siim":
            out[structure] |= siim_decode(str(item), height, width)
        elif spec.kind == "coco":
            out[structure] |= coco_decode(item, height, width)
        elif spec.kind == "files":
            values = read_mask_image(Path(item))
            if values.shape != (height, width):
                found = f"{values.shape[1]}x{values.shape[0]}"
                raise DataError(f"mask file is {found} but its image is {width}x{height} (width x height)")
            if structure < 0:
                out |= masks_from_label_image(values, k)
            else:
                out[structure] |= values != 0
        elif spec.kind == "seg":
            seg = read_dicom_seg(Path(item))
            if seg.masks.shape[1:] != (height, width):
                raise DataError(
                    f"DICOM SEG is {seg.masks.shape[2]}x{seg.masks.shape[1]} but its image is {width}x{height}"
                )
            for label, plane in zip(seg.labels, seg.masks, strict=True):
                if label not in spec.structures:
                    raise DataError(f"DICOM SEG segment {label!r} is not one of the structures {list(spec.structures)}")
                out[spec.structures.index(label)] |= plane
        else:  # pragma: no cover - readers only make the kinds above
            raise ValueError(f"unknown mask kind {spec.kind!r}")
    for structure in spec.required:
        if not out[structure].any():
            raise DataError(f"the annotation of {spec.structures[structure]!r} holds no pixel (an empty mask)")
    return out if spec.keep is None else out[list(spec.keep)]
