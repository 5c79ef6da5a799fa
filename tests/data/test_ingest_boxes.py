"""Detection sources: RSNA Pneumonia, VinBigData, NIH box list and COCO boxes ingested into ``boxes.parquet``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.boxes import BOX_FILE, to_original, to_training
from radflow.data.dataset import Dataset
from radflow.data.dicom import write_dicom
from radflow.data.ingest import SALT_FILE, IngestOptions, ingest, source_paths
from radflow.data.split import split_dataset
from radflow.errors import DataError

from .sources_fixtures import write_png

SIZE = 32


def _options(**kw: object) -> IngestOptions:
    return IngestOptions(size=SIZE, workers=1, **kw)  # type: ignore[arg-type]


def _by_name(ds: Dataset, salt: Path) -> dict[str, int]:
    """Manifest rows by the source file's stem (through the salt file's key -> path map)."""
    paths = source_paths(salt)
    return {paths[key].stem: row for row, key in enumerate(ds.manifest["source_key"])}


def _corners(frame: pd.DataFrame) -> list[list[float]]:
    return sorted(frame[["x0", "y0", "x1", "y1"]].to_numpy().tolist())


SHAPES = {"p0": (40, 48), "p1": (48, 40), "p2": (36, 36), "p3": (40, 48), "p4": (40, 48)}


def _rsna(root: Path) -> Path:
    (root / "stage_2_train_images").mkdir(parents=True)
    for i, (name, shape) in enumerate(SHAPES.items()):
        pixels = np.random.default_rng(i).integers(0, 4096, shape, dtype=np.uint16)
        write_dicom(root / "stage_2_train_images" / f"{name}.dcm", pixels, bits_stored=12, uid_seed=f"rsna-{i}")
    rows = [
        "patientId,x,y,width,height,Target",
        "p0,4,6,10,8,1",  # 2
        "p0,30.5,20,12,15,1",  # 3: a second box of p0
        "p1,,,,,0",  # 4: negative
        "p2,0,0,36,36,1",  # 5: the whole (square) image
        "p3,4,x,10,8,1",  # 6: non-numeric y
        "p4,40,30,9,5,1",  # 7: 40 + 9 > 48, outside its image
        "ghost,1,1,2,2,1",  # 8: no such image
    ]
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_rsna_boxes_land_exactly_and_go_back_to_the_original(tmp_path: Path) -> None:
    src = _rsna(tmp_path / "rsna")
    info = ingest(src, "rsna-boxes", tmp_path / "ds", _options())
    assert info["task"] == "detection" and info["labels"] == ["Lung Opacity"]
    assert info["boxes"]["labels"] == ["Lung Opacity"] and info["boxes"]["counts"] == {"Lung Opacity": 3}
    errors = {entry["row"]: entry["error"] for entry in info["skipped"]}
    assert set(errors) == {6, 7, 8}, errors
    assert "y is not a number: 'x'" in errors[6]
    assert "outside its 48 x 40" in errors[7]
    assert "does not exist" in errors[8]
    assert all(entry["table"] == "stage_2_train_labels.csv" for entry in info["skipped"])
    ds = Dataset.open(tmp_path / "ds")
    assert ds.has_boxes and (tmp_path / "ds" / BOX_FILE).is_file()
    rows = _by_name(ds, tmp_path / SALT_FILE)
    assert set(rows) == {"p0", "p1", "p2"}
    p0, p1, p2 = ds.boxes([rows["p0"], rows["p1"], rows["p2"]])
    original = np.array([[4, 6, 14, 14], [30.5, 20, 42.5, 35]])
    assert _corners(p0) == sorted(to_training(original, 40, 48, SIZE).tolist())
    # 40 x 48 padded to 48 with 4 rows above, then scaled by 32/48
    assert _corners(p0)[0] == pytest.approx([4 * 2 / 3, 10 * 2 / 3, 14 * 2 / 3, 18 * 2 / 3])
    back = to_original(p0[["x0", "y0", "x1", "y1"]].to_numpy(), 40, 48, SIZE)
    assert np.abs(np.sort(back, axis=0) - np.sort(original, axis=0)).max() < 0.5
    assert len(p1) == 0 and ds.targets(np.array([rows["p1"]]))[0, 0] == 0
    assert _corners(p2) == [[0.0, 0.0, 32.0, 32.0]] and ds.targets(np.array([rows["p2"]]))[0, 0] == 1
    assert set(p0["reader"]) == {""} and set(p0["score"]) == {1.0}


def test_rsna_reingest_reuses_pixels_and_strict_fails_keeping_the_dataset(tmp_path: Path) -> None:
    src = _rsna(tmp_path / "rsna")
    first = ingest(src, "rsna-boxes", tmp_path / "ds", _options())
    before = pd.read_parquet(tmp_path / "ds" / BOX_FILE)
    again = ingest(src, "rsna-boxes", tmp_path / "ds", _options())  # pixels reused, boxes read again
    assert again["ingest"]["reused_images"] == 3 and again["version"] == first["version"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ds" / BOX_FILE), before)
    with pytest.raises(DataError, match=r"stage_2_train_labels\.csv, row 6: y is not a number"):
        ingest(src, "rsna-boxes", tmp_path / "ds", _options(strict=True))
    csv = src / "stage_2_train_labels.csv"
    csv.write_text("\n".join(line for line in csv.read_text().splitlines() if line[:2] not in ("p3", "gh")) + "\n")
    with pytest.raises(DataError, match=r"stage_2_train_labels\.csv, row 6: box 'Lung Opacity' .* lies outside"):
        ingest(src, "rsna-boxes", tmp_path / "ds", _options(strict=True))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ds" / BOX_FILE), before)
    assert len(Dataset.open(tmp_path / "ds").manifest) == 3


def _vinbig(root: Path) -> None:
    for i, name in enumerate(("v0", "v1", "v2")):
        write_png(root / "train" / f"{name}.png", i, (40, 64))
    rows = [
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max",
        "v0,Nodule/Mass,8,R1,10,10,20,20",  # 2
        "v0,Nodule/Mass,8,R2,12,10,22,20",  # 3: R2 agrees with R1
        "v0,Cardiomegaly,3,R3,30,20,60,38",  # 4: R3 alone
        "v0,No finding,14,R4,,,,",  # 5: R4 found nothing
        "v1,No finding,14,R1,,,,",  # 6
        "v1,No finding,14,R2,,,,",  # 7
        "v2,Nodule/Mass,8,R1,1,1,5,5",  # 8
        "v2,Tumour,15,R2,1,1,5,5",  # 9: not a VinBigData class
    ]
    (root / "train.csv").write_text("\n".join(rows) + "\n")


def test_vinbig_keeps_each_reader_and_fuses_for_training(tmp_path: Path) -> None:
    _vinbig(tmp_path / "vin")
    info = ingest(tmp_path / "vin", "vinbig", tmp_path / "ds", _options())
    assert info["boxes"]["readers"] == ["R1", "R2", "R3"] and info["boxes"]["fusion"]["iou"] == 0.5
    (entry,) = info["skipped"]
    assert entry["row"] == 9 and "'Tumour' is not declared" in entry["error"]
    ds = Dataset.open(tmp_path / "ds")
    rows = _by_name(ds, tmp_path / SALT_FILE)
    assert set(rows) == {"v0", "v1"}
    r1, r2, r3 = (ds.boxes([rows["v0"]], reader=r)[0] for r in ("R1", "R2", "R3"))
    fused = ds.boxes([rows["v0"]])[0].set_index("label")
    assert _corners(r1) == to_training(np.array([[10, 10, 20, 20]]), 40, 64, SIZE).tolist()
    assert len(r2) == 1 and len(r3) == 1
    assert (
        fused.loc["Nodule/Mass", ["x0", "y0", "x1", "y1"]].to_numpy().tolist()
        == to_training(np.array([[11, 10, 21, 20]]), 40, 64, SIZE)[0].tolist()
    )
    # four readers read v0 (R4 found nothing): two of them marked the nodule, one the heart
    assert fused.loc["Nodule/Mass", "score"] == pytest.approx(2 / 4)
    assert fused.loc["Cardiomegaly", "score"] == pytest.approx(1 / 4)
    assert len(ds.boxes([rows["v0"]], reader=None)[0]) == 5
    targets = dict(zip(ds.labels, ds.targets(np.array([rows["v0"]]))[0], strict=True))
    assert targets["Nodule/Mass"] == 1 and targets["Cardiomegaly"] == 1 and targets["ILD"] == 0
    assert ds.targets(np.array([rows["v1"]])).sum() == 0 and len(ds.boxes([rows["v1"]], reader=None)[0]) == 0


def test_nih_box_list_with_its_bracketed_header(tmp_path: Path) -> None:
    src = tmp_path / "nih"
    for i in range(4):
        write_png(src / "images_001" / "images" / f"0000000{i}_000.png", i, (48, 32))
    rows = [
        "Image Index,Finding Label,Bbox [x,y,w,h],,,",
        "00000000_000.png,Infiltrate,2.5,3,10,20,,,",
        "00000000_000.png,Mass,20,30,5,5,,,",
        "00000001_000.png,Nodule,4,4,-3,5,,,",  # negative width
        "00000002_000.png,Effusion,0,0,32,48,,,",
        "00000003_000.png,Mass,1,1,,5,,,",  # a missing coordinate
    ]
    (src / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n")
    info = ingest(src, "nih-boxes", tmp_path / "ds", _options(labels="Infiltration,Mass,Effusion"))
    assert info["labels"] == ["Infiltration", "Mass", "Effusion"]
    errors = {entry["row"]: entry["error"] for entry in info["skipped"]}
    assert set(errors) == {4, 6} and "not positive" in errors[4] and "Bbox w is blank" in errors[6], errors
    ds = Dataset.open(tmp_path / "ds")
    rows_ = _by_name(ds, tmp_path / SALT_FILE)
    boxes = ds.boxes([rows_["00000000_000"]])[0].set_index("label")
    assert boxes.loc["Infiltration", ["x0", "y0", "x1", "y1"]].to_numpy().tolist() == pytest.approx(
        [(2.5 + 8) * 2 / 3, 3 * 2 / 3, (12.5 + 8) * 2 / 3, 23 * 2 / 3]
    )
    assert _corners(ds.boxes([rows_["00000002_000"]])[0]) == [[pytest.approx(16 / 3), 0.0, pytest.approx(80 / 3), 32.0]]


def test_coco_boxes_negatives_and_bad_annotations(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    for i in range(4):
        write_png(src / "images" / f"c{i}.png", i, (40, 48))
    coco = {
        "images": [{"id": i + 1, "file_name": f"c{i}.png", "width": 48, "height": 40} for i in range(4)],
        "categories": [{"id": 2, "name": "Rib fracture"}, {"id": 1, "name": "Nodule"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 4, 10, 12]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 5, 8, 30]},
            {"id": 3, "image_id": 3, "category_id": 7, "bbox": [1, 1, 2, 2]},  # undeclared category
            {"id": 4, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2]},  # no such image
            {"id": 5, "image_id": 4, "category_id": 1, "bbox": [1, "a", 2, 2]},  # non-numeric
        ],
    }
    (src / "annotations.json").write_text(json.dumps(coco))
    info = ingest(src, "coco-boxes", tmp_path / "ds", _options())
    assert info["labels"] == ["Nodule", "Rib fracture"]
    errors = sorted(entry["error"] for entry in info["skipped"])
    assert len(errors) == 3
    assert any("category_id 7 is not declared" in e for e in errors)
    assert any("image id 9, which the JSON does not list" in e for e in errors)
    assert any("not a number: 'a'" in e for e in errors)
    ds = Dataset.open(tmp_path / "ds")
    rows = _by_name(ds, tmp_path / SALT_FILE)
    assert set(rows) == {"c0", "c1"}
    c0, c1 = ds.boxes([rows["c0"], rows["c1"]])
    assert _corners(c0) == sorted(to_training(np.array([[3, 4, 13, 16], [20, 5, 28, 35]]), 40, 48, SIZE).tolist())
    assert len(c1) == 0 and ds.targets(np.array([rows["c1"]])).tolist() == [[0.0, 0.0]]


def test_split_stratifies_by_box_labels_and_keeps_the_boxes(tmp_path: Path) -> None:
    src = tmp_path / "rsna"
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(18):
        write_png(src / f"q{i:02d}.png", i, (32, 40))
        lines.append(f"q{i:02d},2,3,10,10,1" if i % 6 == 0 else f"q{i:02d},,,,,0")
    (src / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    ingest(src, "rsna-boxes", tmp_path / "ds", _options())
    before = pd.read_parquet(tmp_path / "ds" / BOX_FILE)
    summary = split_dataset(tmp_path / "ds", val=0.34, test=0.33, seed=1)
    assert all(count == 1 for count in summary["positives"]["Lung Opacity"].values()), summary["positives"]
    ds = Dataset.open(tmp_path / "ds")
    assert ds.is_split and ds.has_boxes and ds.info["boxes"]["counts"] == {"Lung Opacity": 3}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ds" / BOX_FILE), before)
    test_rows = ds.indices("test")
    assert sum(len(b) for b in ds.boxes(test_rows)) == 1


def test_cli_ingest_vinbig_shows_boxes(tmp_path: Path) -> None:
    _vinbig(tmp_path / "vin")
    result = CliRunner().invoke(
        app, ["ingest", str(tmp_path / "vin"), "--format", "vinbig", "--out", str(tmp_path / "ds"), "--size", "32"]
    )
    assert result.exit_code == 0, result.output
    assert "task detection" in result.output and "3 readers, fused for training" in result.output
    assert "Nodule/Mass 1" in result.output and "row 9" in result.output


def _rect(x: float, y: float, w: float, h: float, label: str, rotation: float = 0) -> dict[str, object]:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]}
    return {"type": "rectanglelabels", "original_width": 48, "original_height": 40, "value": value}


def test_label_studio_rectangles_in_percent_with_two_readers(tmp_path: Path) -> None:
    src = tmp_path / "ls"
    for name in ("1a2b3c4d-l0.png", "l1.png", "l2.png"):
        write_png(src / "upload" / name, len(name), (40, 48))
    (src / "labels.txt").write_text("Nodule\nEffusion\n")
    tasks = [
        {  # two readers agree on a nodule (25% of 48 = 12 px ...)
            "data": {"image": "/data/upload/1/1a2b3c4d-l0.png"},
            "annotations": [
                {"completed_by": 1, "result": [_rect(25, 25, 25, 50, "Nodule")]},
                {"completed_by": 2, "result": [_rect(25, 25, 25, 50, "Nodule")]},
            ],
        },
        {"data": {"image": "/data/upload/1/l1.png"}, "annotations": [{"completed_by": 1, "result": []}]},
        {
            "data": {"image": "/data/upload/1/l2.png"},
            "annotations": [{"completed_by": 1, "result": [_rect(10, 10, 5, 5, "Nodule", rotation=30)]}],
        },
        {"data": {"image": "/data/upload/1/ghost.png"}, "annotations": []},
    ]
    (src / "export.json").write_text(json.dumps(tasks))
    info = ingest(src, "label-studio", tmp_path / "ds", _options())
    assert info["labels"] == ["Nodule", "Effusion"] and info["boxes"]["readers"] == ["1", "2"]
    errors = {entry["row"]: entry["error"] for entry in info["skipped"]}
    assert set(errors) == {2, 3} and "rotated by 30" in errors[2] and "does not exist" in errors[3]
    ds = Dataset.open(tmp_path / "ds")
    rows = _by_name(ds, tmp_path / SALT_FILE)
    fused = ds.boxes([rows["1a2b3c4d-l0"]])[0]
    assert _corners(fused) == to_training(np.array([[12, 10, 24, 30]]), 40, 48, SIZE).tolist()
    assert fused["score"].tolist() == [1.0] and len(ds.boxes([rows["l1"]])[0]) == 0


def test_an_extra_coco_box_folder_joins_training_and_must_label_the_same_findings(tmp_path: Path) -> None:
    """What ``radflow loop`` does with exported box feedback (data/feedback) in a detection workspace."""

    def coco_folder(root: Path, names: list[str], categories: list[str], seed: int) -> Path:
        for i, name in enumerate(names):
            write_png(root / "images" / f"{name}.png", seed + i, (40, 48))
        coco = {
            "images": [
                {"id": i + 1, "file_name": f"images/{n}.png", "width": 48, "height": 40} for i, n in enumerate(names)
            ],
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(categories)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 4, 10, 12]}],
        }
        (root / "annotations.json").write_text(json.dumps(coco))
        return root

    main = coco_folder(tmp_path / "src", ["m0", "m1", "m2"], ["Nodule", "Mass"], 0)
    feedback = coco_folder(tmp_path / "feedback", ["f0", "f1"], ["Nodule", "Mass"], 10)
    info = ingest(main, "coco-boxes", tmp_path / "ds", _options(extra=(feedback,)))
    ds = Dataset.open(tmp_path / "ds")
    assert info["counts"]["images"] == 5 and (ds.manifest["official_split"] == "extra").sum() == 2
    assert sum(len(frame) for frame in ds.boxes(range(5))) == 2
    other = coco_folder(tmp_path / "other", ["o0"], ["Nodule"], 20)
    with pytest.raises(DataError, match="extra data must label the same findings"):
        ingest(main, "coco-boxes", tmp_path / "ds2", _options(extra=(other,)))
