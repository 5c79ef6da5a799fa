"""Segmentation sources: phantom truth, SIIM-ACR RLE, mask folders, COCO and DICOM SEG ingested as mask shards."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.dicom import write_dicom
from radflow.data.ingest import SALT_FILE, IngestOptions, ingest, source_paths
from radflow.data.maskfiles import coco_encode, read_mask_image, siim_encode, write_mask_png
from radflow.data.masks import pack, prepare_mask, unpack
from radflow.data.split import split_dataset
from radflow.data.synth import synth_chest, synth_hand
from radflow.errors import DataError
from radflow.runtime.dicom_seg import build_dicom_seg

from .sources_fixtures import write_png

SIZE = 32


def _truth(src: Path, rel: str, structures: list[str]) -> np.ndarray:
    stem = rel.rsplit(".", 1)[0]
    return np.stack([read_mask_image(src / "masks" / stem / f"{name}.png") != 0 for name in structures])


def _stored_matches_truth(ds: Dataset, src: Path, salt: Path) -> None:
    paths = source_paths(salt)
    for row, key in enumerate(ds.manifest["source_key"]):
        truth = _truth(src, paths[key].relative_to(src.resolve()).as_posix(), ds.structures)
        stored = ds.masks([row])[0]
        assert np.array_equal(stored, prepare_mask(pack(truth), SIZE))
        shown = unpack(stored, len(ds.structures)).any(axis=(1, 2))
        assert ds.targets([row])[0].tolist() == shown.astype(np.float32).tolist()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "chest"
    info = synth_chest(out, n=6, seed=5, size=64, dicom_fraction=0.34, workers=1, masks=True)
    assert info["masks"]["structures"][:3] == ["Right Lung", "Left Lung", "Heart"]
    return out


def test_phantom_chest_masks_ingest_to_its_exact_truth(phantom: Path, tmp_path: Path) -> None:
    info = ingest(phantom, "masks", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    ds = Dataset.open(tmp_path / "ds")
    assert info["task"] == "segmentation" and ds.has_masks
    assert ds.structures == (phantom / "structures.txt").read_text().splitlines()
    assert info["counts"]["images"] == 6 and not info["skipped"]
    assert info["counts"]["patients"] == len({line.split(",")[1] for line in (phantom / "patients.csv").open()}) - 1
    assert info["prevalence"]["all"]["Heart"] == {"positive": 6, "known": 6}
    _stored_matches_truth(ds, phantom, tmp_path / SALT_FILE)
    # the DICOM phantoms' long side spans 43 cm (430 / 64 mm per pixel); at training size x 64 / SIZE
    spacing = ds.manifest[["spacing_row_mm", "spacing_col_mm"]].to_numpy()
    dicom = np.isfinite(spacing[:, 0])
    assert 0 < dicom.sum() < 6 and np.allclose(spacing[dicom], 430 / SIZE, rtol=1e-5)


def test_phantom_rle_csv_reads_as_siim_with_the_same_masks(phantom: Path, tmp_path: Path) -> None:
    ingest(phantom, "masks", tmp_path / "png", IngestOptions(size=SIZE, workers=1))
    ingest(phantom, "siim", tmp_path / "rle", IngestOptions(size=SIZE, workers=1))
    png, rle = Dataset.open(tmp_path / "png"), Dataset.open(tmp_path / "rle")
    assert rle.structures == png.structures
    by_image = dict(zip(png.manifest["image_id"], range(len(png.manifest)), strict=True))
    for row, image_id in enumerate(rle.manifest["image_id"]):
        assert np.array_equal(rle.masks([row]), png.masks([by_image[image_id]]))
    picked = ingest(phantom, "siim", tmp_path / "ptx", IngestOptions(size=SIZE, workers=1, labels="Pneumothorax"))
    assert picked["labels"] == ["Pneumothorax"] and picked["masks"]["dtype"] == "uint8"


def test_phantom_hand_masks(tmp_path: Path) -> None:
    synth_hand(tmp_path / "hand", n=3, seed=1, size=32, workers=1, masks=True)
    info = ingest(tmp_path / "hand", "masks", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    assert info["labels"] == ["Hand"] and info["prevalence"]["all"]["Hand"] == {"positive": 3, "known": 3}
    _stored_matches_truth(Dataset.open(tmp_path / "ds"), tmp_path / "hand", tmp_path / SALT_FILE)
    boneage = ingest(tmp_path / "hand", "boneage", tmp_path / "reg", IngestOptions(size=SIZE, workers=1))
    assert boneage["counts"]["images"] == 3 and not boneage["skipped"]  # mask PNGs never pass for images


def _siim_source(root: Path, n: int, positives: set[int], shape: tuple[int, int] = (20, 24)) -> dict[str, np.ndarray]:
    rows, truth = ["ImageId, EncodedPixels"], {}
    for i in range(n):
        image_id = f"1.2.3.{i}"
        write_png(root / "png-images" / f"{image_id}.png", i, shape)
        mask = np.zeros(shape, bool)
        if i in positives:
            mask[2 : 8 + i % 5, 3 + i % 4 : 12] = True
        truth[image_id] = mask
        rows.append(f"{image_id}, {siim_encode(mask)}")
    (root / "train-rle.csv").write_text("\n".join(rows) + "\n")
    return truth


def test_siim_rows_union_and_bad_rows_are_skipped_by_row(tmp_path: Path) -> None:
    truth = _siim_source(tmp_path / "siim", 4, {1, 2})
    extra = np.zeros((20, 24), bool)
    extra[15:18, 0:2] = True
    with (tmp_path / "siim" / "train-rle.csv").open("a") as f:
        f.write(f"1.2.3.1,{siim_encode(extra)}\n")  # line 6: a second region of image 1
        f.write("1.2.3.2,\n")  # line 7: blank
        f.write("1.2.3.3,0 5 9999 4\n")  # line 8: runs past the 20x24 image
        f.write("1.2.3.9,-1\n")  # line 9: no such image
        f.write("1.2.3.0,4 x\n")  # line 10: not integers
    info = ingest(tmp_path / "siim", "siim", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    errors = {entry["row"]: entry["error"] for entry in info["skipped"]}
    assert set(errors) == {5, 7, 9, 10}, errors
    assert "blank" in errors[7] and "image file missing" in errors[9] and "integer pairs" in errors[10]
    assert "runs past the image" in errors[5] and "24x20" in errors[5]  # image 1.2.3.3's first row is line 5
    assert all(entry["table"] == "train-rle.csv" for entry in info["skipped"])
    ds = Dataset.open(tmp_path / "ds")
    rows = {sha[:20]: i for i, sha in enumerate(ds.manifest["sha256"])}
    paths = source_paths(tmp_path / SALT_FILE)
    for row, key in enumerate(ds.manifest["source_key"]):
        image_id = paths[key].stem
        expected = truth[image_id] | (extra if image_id == "1.2.3.1" else False)
        assert np.array_equal(ds.masks([row])[0], prepare_mask(pack(expected[None]), SIZE))
    assert len(rows) == 3
    with pytest.raises(DataError, match=r"train-rle\.csv, row 7: EncodedPixels is blank"):
        ingest(tmp_path / "siim", "siim", tmp_path / "ds2", IngestOptions(size=SIZE, strict=True))


def test_siim_rle_encoding_nothing_is_an_empty_mask_where_one_is_required(tmp_path: Path) -> None:
    _siim_source(tmp_path / "siim", 3, {1})
    with (tmp_path / "siim" / "train-rle.csv").open("a") as f:
        f.write("1.2.3.2,5 0\n")
    info = ingest(tmp_path / "siim", "siim", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    (entry,) = info["skipped"]
    assert "holds no pixel" in entry["error"] and entry["row"] == 4


def test_split_is_stratified_by_structure_presence(tmp_path: Path) -> None:
    _siim_source(tmp_path / "siim", 24, {0, 5, 9, 14, 19, 23})
    ingest(tmp_path / "siim", "siim", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    summary = split_dataset(tmp_path / "ds", val=0.25, test=0.25, seed=3)
    assert all(count >= 1 for count in summary["positives"]["Pneumothorax"].values()), summary["positives"]
    ds = Dataset.open(tmp_path / "ds")
    assert ds.has_masks and ds.is_split and ds.masks(ds.indices("test")).shape[1:] == (SIZE, SIZE)


def _mask_folder(root: Path) -> None:
    """Three label-index masks (structures.txt: A, B), one too wide, one with index 3; an orphan mask; a bare image."""
    root.mkdir()
    (root / "structures.txt").write_text("A\nB\n")
    for i in range(5):
        write_png(root / "images" / f"case{i}.png", 40 + i, (20, 24))
    labels = np.zeros((20, 24), np.uint8)
    labels[2:6, 2:9] = 1
    labels[10:15, 5:20] = 2
    (root / "masks" / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(labels).save(root / "masks" / "images" / f"case{i}.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "masks" / "images" / "case3.png")
    Image.fromarray(np.full((20, 24), 3, np.uint8)).save(root / "masks" / "images" / "case1.png")
    Image.fromarray(labels).save(root / "masks" / "images" / "nobody.png")
    (root / "patients.csv").write_text("path,patient_id\nimages/case0.png,P1\nimages/case2.png,P1\n")


def test_mask_folder_label_index_and_each_bad_mask(tmp_path: Path) -> None:
    _mask_folder(tmp_path / "src")
    info = ingest(tmp_path / "src", "masks", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    assert info["labels"] == ["A", "B"] and info["counts"] == {**info["counts"], "images": 2, "patients": 1}
    errors = sorted(entry["error"] for entry in info["skipped"])
    assert len(errors) == 4, errors
    assert any("above the 2 declared structures" in e for e in errors)  # case1
    assert any("mask file is 30x20 but its image is 24x20" in e for e in errors)  # case3
    assert any("mask for an image that does not exist" in e for e in errors)  # nobody.png
    assert any("no mask for this image" in e for e in errors)  # case4
    paths = source_paths(tmp_path / SALT_FILE)
    named = {paths[entry["source_key"]].name for entry in info["skipped"]}
    assert named == {"case1.png", "case3.png", "nobody.png", "case4.png"}
    ds = Dataset.open(tmp_path / "ds")
    masks = unpack(ds.masks([0]), 2)[0]
    labels = np.zeros((20, 24), np.uint8)
    labels[2:6, 2:9] = 1
    labels[10:15, 5:20] = 2
    assert np.array_equal(masks, unpack(prepare_mask(pack(np.stack([labels == 1, labels == 2])), SIZE), 2))


def test_per_structure_files_leave_a_missing_structure_unannotated(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_png(src / "a.png", 1, (20, 24))
    write_png(src / "b.png", 2, (20, 24))
    block = np.zeros((20, 24), bool)
    block[3:9, 4:10] = True
    write_mask_png(src / "masks" / "a" / "Heart.png", block)
    write_mask_png(src / "masks" / "a" / "Lung.png", np.zeros((20, 24), bool))
    write_mask_png(src / "masks" / "b" / "Heart.png", block)
    info = ingest(src, "masks", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.structures == ["Heart", "Lung"] and not info["skipped"]
    targets = ds.targets()
    assert targets[:, 0].tolist() == [1.0, 1.0]
    assert sorted(str(v) for v in targets[:, 1]) == ["0.0", "nan"]


def test_coco_json_polygons_and_rle(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    for i in range(3):
        write_png(src / "images" / f"x{i}.png", i, (20, 24))
    block = np.zeros((20, 24), bool)
    block[4:12, 6:18] = True
    coco = {
        "images": [
            {"id": 1, "file_name": "x0.png", "height": 20, "width": 24},
            {"id": 2, "file_name": "x1.png", "height": 20, "width": 24},
            {"id": 3, "file_name": "x2.png", "height": 24, "width": 20},
            {"id": 4, "file_name": "gone.png", "height": 20, "width": 24},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "segmentation": coco_encode(block), "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 3, "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8]], "iscrowd": 0},
            {"id": 3, "image_id": 3, "category_id": 3, "segmentation": [[2, 2, 10, 2, 10, 8]], "iscrowd": 0},
            {"id": 4, "image_id": 9, "category_id": 3, "segmentation": [[2, 2, 10, 2, 10, 8]], "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "Nodule"}, {"id": 3, "name": "Lung"}],
    }
    (src / "annotations.json").write_text(json.dumps(coco))
    info = ingest(src, "masks", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    assert info["labels"] == ["Lung", "Nodule"]  # categories in id order
    errors = [entry["error"] for entry in info["skipped"]]
    assert any("image_id 9" in e for e in errors) and any("COCO image 4" in e for e in errors)
    assert any("annotation is for a 20x24 image but its image is 24x20" in e for e in errors), errors
    ds = Dataset.open(tmp_path / "ds")
    assert len(ds.manifest) == 2
    first = int(np.flatnonzero(ds.targets()[:, 1] == 1)[0])
    lung = np.zeros((20, 24), bool)
    lung[2:8, 2:10] = True
    assert np.array_equal(ds.masks([first])[0], prepare_mask(pack(np.stack([lung, block])), SIZE))
    assert ds.targets().tolist().count([0.0, 0.0]) == 1  # x1: listed, nothing drawn: both absent


def test_dicom_seg_masks_and_a_seg_whose_source_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "seg"
    (src / "masks").mkdir(parents=True)
    pixels = np.full((20, 24), 500, np.uint16)
    write_dicom(src / "img.dcm", pixels, bits_stored=12, uid_seed="seg-src", attributes={"PatientID": "PAT-7"})
    source = pydicom.dcmread(src / "img.dcm")
    masks = np.zeros((2, 20, 24), bool)
    masks[0, 2:10, 3:12] = True
    masks[1, 12:18, 4:20] = True
    build_dicom_seg(source, masks, ["Heart", "Lung"], model_name="reader", model_version="1").save_as(
        src / "masks" / "img-seg.dcm"
    )
    write_dicom(tmp_path / "other.dcm", np.zeros((20, 24), np.uint16), bits_stored=12, uid_seed="elsewhere")
    buffer = io.BytesIO()
    build_dicom_seg(
        pydicom.dcmread(tmp_path / "other.dcm"), masks[:1], ["Heart"], model_name="reader", model_version="1"
    ).save_as(buffer)
    (src / "masks" / "orphan.dcm").write_bytes(buffer.getvalue())
    info = ingest(src, "masks", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    assert info["labels"] == ["Heart", "Lung"] and info["counts"]["images"] == 1
    (entry,) = info["skipped"]
    assert "references a source image that is not in the source folder" in entry["error"]
    assert source_paths(tmp_path / SALT_FILE)[entry["source_key"]].name == "orphan.dcm"
    ds = Dataset.open(tmp_path / "ds")
    assert np.array_equal(ds.masks([0])[0], prepare_mask(pack(masks), SIZE))


def test_reingest_reads_edited_masks_and_a_failed_one_keeps_the_dataset(tmp_path: Path) -> None:
    truth = _siim_source(tmp_path / "siim", 3, {1})
    ingest(tmp_path / "siim", "siim", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    grown = truth["1.2.3.1"].copy()
    grown[:, :2] = True
    csv = tmp_path / "siim" / "train-rle.csv"
    csv.write_text(csv.read_text().replace(siim_encode(truth["1.2.3.1"]), siim_encode(grown)))
    again = ingest(tmp_path / "siim", "siim", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    assert again["ingest"]["reused_images"] == 3  # pixels reused, masks read again
    ds = Dataset.open(tmp_path / "ds")
    row = int(np.flatnonzero(ds.targets()[:, 0] == 1)[0])
    assert np.array_equal(ds.masks([row])[0], prepare_mask(pack(grown[None]), SIZE))
    before = ds.masks(range(3)).copy()
    csv.write_text("ImageId,EncodedPixels\n1.2.3.0,0 99999\n")
    with pytest.raises(DataError, match="no image of"):
        ingest(tmp_path / "siim", "siim", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    kept = Dataset.open(tmp_path / "ds")
    assert len(kept.manifest) == 3 and np.array_equal(kept.masks(range(3)), before)
    assert not math.isnan(float(kept.targets()[0, 0]))


def test_cli_synth_masks_then_ingest_siim(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["synth", "hand", str(tmp_path / "h"), "--n", "2", "--size", "32", "--masks", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["masks"] == {"structures": ["Hand"], "images_showing": {"Hand": 2}}
    args = ["ingest", str(tmp_path / "h"), "--format", "siim", "--out", str(tmp_path / "ds"), "--size", "32"]
    result = runner.invoke(app, [*args, "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["task"] == "segmentation"
    bad = runner.invoke(app, ["ingest", str(tmp_path / "h"), "--format", "sim", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "siim" in bad.output


def test_siim_competition_dicom_tree_by_image_id_with_identity_from_headers(tmp_path: Path) -> None:
    src = tmp_path / "siim"
    rows, truth = ["ImageId,EncodedPixels"], {}
    for i in range(3):
        pixels = np.full((20, 24), 300 + 10 * i, np.uint16)
        tmp = tmp_path / f"tmp{i}.dcm"
        write_dicom(tmp, pixels, bits_stored=12, uid_seed=f"siim-{i}", attributes={"PatientID": f"anon-{i // 2}"})
        uid = str(pydicom.dcmread(tmp).SOPInstanceUID)
        target = src / "dicom-images-train" / f"1.2.study{i}" / f"1.2.series{i}" / f"{uid}.dcm"
        target.parent.mkdir(parents=True)
        tmp.rename(target)
        mask = np.zeros((20, 24), bool)
        mask[i : i + 6, 2:9] = i > 0
        truth[uid] = mask
        rows.append(f"{uid},{siim_encode(mask)}")
    (src / "train-rle.csv").write_text("\n".join(rows) + "\n")
    info = ingest(src, "siim", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    assert info["counts"] == {**info["counts"], "images": 3, "patients": 2} and not info["skipped"]
    ds = Dataset.open(tmp_path / "ds")
    paths = source_paths(tmp_path / SALT_FILE)
    for row, key in enumerate(ds.manifest["source_key"]):
        expected = truth[paths[key].stem]
        assert np.array_equal(ds.masks([row])[0], prepare_mask(pack(expected[None]), SIZE))
        assert ds.targets([row])[0, 0] == float(expected.any())


def test_masks_labels_select_structures_in_order_and_strict_names_the_file(phantom: Path, tmp_path: Path) -> None:
    options = IngestOptions(size=SIZE, workers=1, labels="Heart,Left Lung")
    info = ingest(phantom, "masks", tmp_path / "ds", options)
    assert info["labels"] == ["Heart", "Left Lung"]
    full = ingest(phantom, "masks", tmp_path / "full", IngestOptions(size=SIZE, workers=1))
    picked, whole = Dataset.open(tmp_path / "ds"), Dataset.open(tmp_path / "full")
    order = [full["labels"].index("Heart"), full["labels"].index("Left Lung")]
    assert np.array_equal(unpack(picked.masks(range(6)), 2), unpack(whole.masks(range(6)), 6)[:, order])
    src = tmp_path / "bad"
    _mask_folder(src)
    strict = IngestOptions(size=SIZE, workers=1, strict=True)
    with pytest.raises(DataError, match=r"masks/images/nobody\.png: mask for an image that does not exist"):
        ingest(src, "masks", tmp_path / "strict", strict)
    (src / "masks" / "images" / "nobody.png").unlink()
    (src / "images" / "case4.png").unlink()
    with pytest.raises(DataError, match=r"images/case1\.png: mask: label index 3 .* above the 2 declared"):
        ingest(src, "masks", tmp_path / "strict", strict)
