"""User mask formats: each codec's round trip is pixel-exact, and each bad input is a clear DataError."""

from __future__ import annotations

import io
from itertools import groupby
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from radflow.data.dicom import write_dicom
from radflow.data.maskfiles import (
    MaskSpec,
    coco_decode,
    coco_encode,
    label_studio_decode,
    label_studio_encode,
    label_studio_masks,
    label_studio_result,
    load_mask,
    masks_from_label_image,
    read_dicom_seg,
    read_mask_image,
    siim_decode,
    siim_encode,
    write_mask_png,
)
from radflow.errors import DataError
from radflow.runtime.dicom_seg import build_dicom_seg

H, W = 40, 48


def _masks() -> list[np.ndarray]:
    """An empty mask, a block touching the last pixel, and noise (many short runs)."""
    block = np.zeros((H, W), bool)
    block[5:20, 10:30] = True
    block[0, 0] = block[-1, -1] = True
    noise = np.random.default_rng(0).random((H, W)) > 0.5
    return [np.zeros((H, W), bool), block, noise]


def _mask_functions_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The SIIM-ACR competition's own decoder (mask_functions.py), as its users call it (then .T)."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    position = 0
    for start, length in zip(array[0::2], array[1::2], strict=True):
        position += start
        mask[position : position + length] = 255
        position += length
    return mask.reshape(width, height).T


@pytest.mark.parametrize("index", range(3))
def test_siim_rle_round_trip_matches_the_competition_decoder(index: int) -> None:
    mask = _masks()[index]
    encoded = siim_encode(mask)
    assert np.array_equal(siim_decode(encoded, H, W), mask)
    if mask.any():
        assert np.array_equal(_mask_functions_rle2mask(encoded, W, H) > 0, mask)
    else:
        assert encoded == "-1"


def test_siim_rle_is_column_major_with_relative_offsets() -> None:
    mask = siim_decode("1 2 3 1", 4, 3)  # pixels 1-2 down the first column, then 3 skipped, pixel 6
    expected = np.zeros((4, 3), bool)
    expected[1:3, 0] = True
    expected[2, 1] = True
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 5 2000 3", "reaches pixel 2008 of a 48x40 image"),
        ("3 4 5", "pairs"),
        ("a b", "integer pairs"),
        ("", "blank"),
        ("-3 4", "non-negative"),
    ],
)
def test_siim_rle_bad_input(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        siim_decode(text, H, W)


@pytest.mark.parametrize("index", range(3))
def test_coco_rle_round_trip(index: int) -> None:
    mask = _masks()[index]
    rle = coco_encode(mask)
    assert rle["size"] == [H, W] and isinstance(rle["counts"], str)
    assert np.array_equal(coco_decode(rle, H, W), mask)


def test_coco_uncompressed_rle_and_polygons() -> None:
    mask = _masks()[1]
    flat = mask.T.ravel().astype(np.int8)  # COCO counts run column-major, starting with zeros
    counts = [len(list(run)) for _, run in groupby(flat)]
    counts = ([0] if flat[0] else []) + counts
    assert np.array_equal(coco_decode({"size": [H, W], "counts": counts}, H, W), mask)
    square = coco_decode([[10.0, 5.0, 30.0, 5.0, 30.0, 20.0, 10.0, 20.0]], H, W)
    rows, cols = np.nonzero(square)
    # COCO coordinates are pixel corners: the 20 x 15 square covers pixels 10-29 and rows 5-19
    assert (rows.min(), rows.max(), cols.min(), cols.max(), square.sum()) == (5, 19, 10, 29, 300)


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [W, H], "counts": "abc"}, r"COCO RLE is 40x48 \(width x height\) but its image is 48x40"),
        ({"size": [H, W], "counts": [10, 5]}, "cover 15 pixels"),
        ([[1.0, 2.0, 3.0, 4.0]], "at least 3"),
        ("nonsense", "polygons or an RLE"),
    ],
)
def test_coco_bad_input(segmentation: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        coco_decode(segmentation, H, W)


def _label_studio_reference_encode(mask: np.ndarray) -> list[int]:
    """Label Studio converter's encode_rle: literal runs for single values, series otherwise (its format)."""
    values = np.repeat(mask.ravel().astype(np.uint8) * 255, 4)
    out = f"{len(values):032b}{7:05b}" + "".join(f"{n - 1:04b}" for n in (3, 4, 8, 16))
    for value, run in groupby(values.tolist()):
        n = len(list(run))
        if n == 1:
            out += f"000000{value:08b}"
            continue
        while n > 0:
            chunk = min(n, 1 << 16)
            size = next(i for i, bits in enumerate((3, 4, 8, 16)) if chunk - 1 < 1 << bits)
            out += f"1{size:02b}{chunk - 1:0{(3, 4, 8, 16)[size]}b}{value:08b}"
            n -= chunk
    out += "0" * (8 - len(out) % 8)
    return [int(out[i : i + 8], 2) for i in range(0, len(out), 8)]


def _label_studio_reference_decode(rle: list[int]) -> np.ndarray:
    """Label Studio converter's decode_rle (thi.ng rle-pack), for checking what we write."""
    bits = "".join(f"{b:08b}" for b in rle)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        pos += n
        return int(bits[pos - n : pos], 2)

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
            i = j
        else:
            while i < j:
                out[i] = read(word)
                i += 1
    return out


@pytest.mark.parametrize("index", range(3))
def test_label_studio_brush_rle_round_trip_in_label_studios_own_format(index: int) -> None:
    mask = _masks()[index]
    rle = label_studio_encode(mask)
    assert np.array_equal(label_studio_decode(rle, H, W), mask)
    assert np.array_equal(_label_studio_reference_decode(rle).reshape(H, W, 4)[:, :, 3] > 0, mask)
    assert np.array_equal(label_studio_decode(_label_studio_reference_encode(mask), H, W), mask)


def test_label_studio_rle_for_another_size_or_truncated() -> None:
    rle = label_studio_encode(_masks()[1])
    with pytest.raises(DataError, match="needs 15360"):
        label_studio_decode(rle, H, W * 2)
    with pytest.raises(DataError, match="truncated"):
        label_studio_decode(rle[: len(rle) // 2], H, W)


def test_png_and_tiff_masks_binary_label_index_and_per_structure(tmp_path: Path) -> None:
    block, noise = _masks()[1], _masks()[2]
    write_mask_png(tmp_path / "binary.png", block)
    assert np.array_equal(read_mask_image(tmp_path / "binary.png") != 0, block)
    labels = np.where(block, 1, 0) + np.where(noise & ~block, 2, 0)
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "labels.tif")
    palette = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    palette.save(tmp_path / "labels.png")
    for name in ("labels.tif", "labels.png"):
        masks = masks_from_label_image(read_mask_image(tmp_path / name), 2)
        assert np.array_equal(masks[0], block) and np.array_equal(masks[1], noise & ~block)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="colour"):
        read_mask_image(tmp_path / "rgb.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="not a readable PNG/TIFF"):
        read_mask_image(tmp_path / "bad.png")


def test_label_index_above_the_declared_structures() -> None:
    labels = np.zeros((H, W), np.uint8)
    labels[3, 4] = 3
    with pytest.raises(DataError, match="label index 3 in the mask is above the 2 declared structures"):
        masks_from_label_image(labels, 2)


def test_load_mask_per_structure_files_and_size_mismatch(tmp_path: Path) -> None:
    block, noise = _masks()[1], _masks()[2]
    write_mask_png(tmp_path / "a.png", block)
    write_mask_png(tmp_path / "b.png", noise)
    spec = MaskSpec("files", ((0, str(tmp_path / "a.png")), (1, str(tmp_path / "b.png"))), ("A", "B"), (0, 1))
    assert np.array_equal(load_mask(spec, H, W), np.stack([block, noise]))
    with pytest.raises(DataError, match=r"mask file is 48x40 but its image is 40x48 \(width x height\)"):
        load_mask(spec, W, H)
    union = MaskSpec("siim", ((0, siim_encode(block)), (0, siim_encode(noise))), ("A",), (0,))
    assert np.array_equal(load_mask(union, H, W)[0], block | noise)
    empty = MaskSpec("coco", ((0, coco_encode(np.zeros((H, W), bool))),), ("A",), (0,), required=(0,))
    with pytest.raises(DataError, match="holds no pixel"):
        load_mask(empty, H, W)


def _source_dicom(tmp_path: Path) -> pydicom.Dataset:
    write_dicom(tmp_path / "src.dcm", np.full((H, W), 100, np.uint16), bits_stored=12, uid_seed="maskfiles")
    return pydicom.dcmread(tmp_path / "src.dcm")


def test_dicom_seg_round_trip_references_its_source(tmp_path: Path) -> None:
    source = _source_dicom(tmp_path)
    masks = np.stack([_masks()[1], np.zeros((H, W), bool), _masks()[2]])
    buffer = io.BytesIO()
    names = ["Left Lung", "Heart", "Lesion"]
    build_dicom_seg(source, masks, names, model_name="reader", model_version="1").save_as(buffer)
    seg = read_dicom_seg(buffer.getvalue())
    assert seg.source_uid == str(source.SOPInstanceUID)
    assert seg.labels == ("Left Lung", "Heart", "Lesion")
    assert np.array_equal(seg.masks, masks)
    with pytest.raises(DataError, match="not a segmentation"):
        read_dicom_seg(tmp_path / "src.dcm")


def test_label_studio_results_to_structures() -> None:
    block, noise = _masks()[1], _masks()[2]
    results = [
        label_studio_result(block, "Heart"),
        label_studio_result(noise, "Lung"),
        label_studio_result(noise & block, "Heart"),
        {"type": "choices", "value": {"choices": ["ok"]}},
    ]
    masks = label_studio_masks(results, ["Lung", "Heart", "Lesion"])
    assert np.array_equal(masks, np.stack([noise, block, np.zeros((H, W), bool)]))
    with pytest.raises(DataError, match=r"'Hart' is not one of the structures.*Did you mean 'Heart'"):
        label_studio_masks([label_studio_result(block, "Hart")], ["Lung", "Heart"])
    with pytest.raises(DataError, match="share one original_width"):
        label_studio_masks([results[0], label_studio_result(np.zeros((4, 4), bool), "Lung")], ["Lung", "Heart"])
