"""Crop datasets (``radflow workflow crops``): each labelled box cut as a served workflow cuts it, with its
image's patient and split kept, and bad tables refused naming the row and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.decode import decode_image
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.preprocess import prepare_pixels
from radflow.data.split import split_dataset
from radflow.errors import DataError
from radflow.workflow.crops import CROPS_FILE, build_crops
from radflow.workflow.glue import crop_boxes, resize_crops

HEIGHT, WIDTH, SIZE = 30, 40, 16
# per image: boxes (x, y, width, height) with their level and 0/1 label
BOXES = [
    [(10, 5, 10, 8, "L1", 1), (2, 16, 12, 10, "L2", 0)],
    [(0, 0, 8, 6, "L1", 0), (30, 22, 10, 8, "L2", 1)],  # at the corners: the margin is clipped
    [(12, 10, 6, 6, "L1", 1)],
    [(5, 5, 20, 20, "L1", 0)],
    [(14, 3, 9, 9, "L1", 1)],
    [(1, 1, 4, 4, "L1", 0)],
]


def _write_source(root: Path) -> Path:
    """Six PNG phantoms (each its own patient) whose pixel values say where they are, and a COCO JSON with
    per-box ``level`` and ``schmorl`` attributes (one of them in an ``attributes`` dict, CVAT style)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    images, annotations = [], []
    for k, boxes in enumerate(BOXES):
        name = f"images/p{k}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), ((xx * 5 + yy * 2 + k * 7) % 256).astype(np.uint8))
        images.append({"id": k + 1, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for x, y, w, h, level, node in boxes:
            ann = {"id": len(annotations) + 1, "image_id": k + 1, "category_id": 1, "bbox": [x, y, w, h]}
            ann.update(
                {"attributes": {"level": level, "schmorl": node}} if k == 4 else {"level": level, "schmorl": node}
            )
            annotations.append(ann)
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "Vertebra"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root / "annotations.json"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(COCO JSON, the split detection dataset ingested from it)."""
    root = tmp_path_factory.mktemp("crops")
    table = _write_source(root / "src")
    ingest(root / "src", "coco-boxes", root / "ds", IngestOptions(size=32, workers=1))
    split_dataset(root / "ds", val=0.2, test=0.2, seed=0)
    return table, root / "ds"


def test_each_box_is_cut_with_its_margin_and_resized_as_the_workflow_does(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    table, ds = source
    info = build_crops(ds, tmp_path / "crops", table, "schmorl", keep=["level"], margin=0.1, size=SIZE)
    assert info["task"] == "multilabel" and info["labels"] == ["schmorl"] and info["counts"]["images"] == 8
    crops = Dataset.open(tmp_path / "crops")
    meta = pd.read_parquet(tmp_path / "crops" / CROPS_FILE)
    assert list(meta["image_id"]) == list(crops.manifest["image_id"])
    # box (10, 5, 10, 8), margin 0.1: 1 px left/right, 0.8 px top/bottom -> floor/ceil -> cut [9, 4, 21, 14)
    first = meta.iloc[0]
    assert [first[c] for c in ("x0", "y0", "x1", "y1")] == [10, 5, 20, 13]
    assert [first[c] for c in ("cut_x0", "cut_y0", "cut_x1", "cut_y1")] == [9, 4, 21, 14]
    # the corner boxes: (0, 0, 8, 6) -> [0, 0, 9, 7); (30, 22, 10, 8) -> [29, 21, 40, 30) (clipped)
    assert [meta.iloc[2][c] for c in ("cut_x0", "cut_y0", "cut_x1", "cut_y1")] == [0, 0, 9, 7]
    assert [meta.iloc[3][c] for c in ("cut_x0", "cut_y0", "cut_x1", "cut_y1")] == [29, 21, 40, 30]
    decoded = decode_image((table.parent / "images" / "p0.png").read_bytes()).pixels
    assert np.array_equal(crops.image(0), prepare_pixels(decoded[4:14, 9:21], SIZE))
    # the same pixels a served workflow's crop (margin 0.1) and resize steps give the classifier
    served = resize_crops(crop_boxes(decoded, [{"label": "Vertebra", "score": 0.9, "box": [10, 5, 20, 13]}], 0.1), SIZE)
    assert np.array_equal(crops.image(0), served[0].pixels)
    # labels from the attribute (also from an `attributes` dict), the level kept per crop
    assert crops.targets()[:, 0].tolist() == [b[5] for boxes in BOXES for b in boxes]
    assert meta["level"].tolist() == [b[4] for boxes in BOXES for b in boxes]


def test_every_crop_keeps_its_images_patient_and_split(source: tuple[Path, Path], tmp_path: Path) -> None:
    table, ds = source
    build_crops(ds, tmp_path / "crops", table, "schmorl", size=SIZE)
    detection, crops = Dataset.open(ds), Dataset.open(tmp_path / "crops")
    by_image = detection.manifest.set_index("image_id")
    meta = pd.read_parquet(tmp_path / "crops" / CROPS_FILE)
    origin = by_image.loc[meta["source_image_id"]]
    for column in ("patient_id", "study_id", "split", "sha256"):
        assert crops.manifest[column].tolist() == origin[column].tolist()
    assert set(crops.manifest["split"]) == {"train", "val", "test"}
    # held out for good: a new split of the crops keeps each crop where its image is
    assert (crops.manifest["official_split"] == crops.manifest["split"]).all()
    split_dataset(tmp_path / "crops", val=0.5, test=0.4, seed=7)
    assert Dataset.open(tmp_path / "crops").manifest["split"].tolist() == origin["split"].tolist()


def test_a_csv_table_gives_the_same_crops(source: tuple[Path, Path], tmp_path: Path) -> None:
    table, ds = source
    rows = [("path", "patient_id", "level", "x", "y", "width", "height", "schmorl")]
    rows += [(f"images/p{k}.png", f"p{k}", b[4], *b[:4], b[5]) for k, boxes in enumerate(BOXES) for b in boxes]
    with (table.parent / "vertebrae.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    build_crops(ds, tmp_path / "coco", table, "schmorl", size=SIZE)
    build_crops(ds, tmp_path / "csv", table.parent / "vertebrae.csv", "schmorl", keep=["level"], size=SIZE)
    coco, from_csv = Dataset.open(tmp_path / "coco"), Dataset.open(tmp_path / "csv")
    assert coco.version == from_csv.version
    assert np.array_equal(coco.images(range(8)), from_csv.images(range(8)))


def _table(tmp_path: Path, source: tuple[Path, Path], edit: dict[str, object]) -> Path:
    coco = json.loads(source[0].read_text())
    coco["annotations"][1].update(edit)
    path = source[0].parent / f"edited-{tmp_path.name}.json"
    path.write_text(json.dumps(coco))
    return path


def test_bad_tables_are_refused_naming_the_row_and_field(source: tuple[Path, Path], tmp_path: Path) -> None:
    table, ds = source
    out = tmp_path / "crops"
    outside = _table(tmp_path, source, {"bbox": [35, 25, 10, 8]})
    with pytest.raises(
        DataError, match=r"annotation 1 \(id 2\): the box lies outside its 40 x 30 .*x \+ width = 45 > 40"
    ):
        build_crops(ds, out, outside, "schmorl")
    missing = _table(tmp_path, source, {"schmorl": None})
    with pytest.raises(DataError, match=r"annotation 1 \(id 2\): field 'schmorl' is missing"):
        build_crops(ds, out, missing, "schmorl")
    not_binary = _table(tmp_path, source, {"schmorl": 2})
    with pytest.raises(DataError, match=r"field 'schmorl' must be 0 or 1, got 2"):
        build_crops(ds, out, not_binary, "schmorl")
    with pytest.raises(DataError, match=r"no annotation field 'schmorls' .*Did you mean 'schmorl'"):
        build_crops(ds, out, table, "schmorls")
    with (table.parent / "bad.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "x", "y", "w", "height", "schmorl"), ("images/p0.png", 1, 1, 4, 4, 0)])
    with pytest.raises(DataError, match=r"bad.csv: no column 'width' \(it has path, x, y, w, height, schmorl\)"):
        build_crops(ds, out, table.parent / "bad.csv", "schmorl")
    with (table.parent / "bad.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "x", "y", "width", "height", "schmorl"), ("images/p0.png", 1, "", 4, 4, 0)])
    with pytest.raises(DataError, match=r"bad.csv, row 2: field 'y' is missing"):
        build_crops(ds, out, table.parent / "bad.csv", "schmorl")
    assert not (out / "manifest.parquet").exists()


def test_cli_writes_the_crops_and_names_a_bad_field(source: tuple[Path, Path], tmp_path: Path) -> None:
    table, ds = source
    runner = CliRunner()
    args = ["workflow", "crops", str(ds), "--out", str(tmp_path / "c"), "--boxes", str(table.parent)]
    done = runner.invoke(app, [*args, "--label", "schmorl", "--keep", "level", "--size", "16", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["crops"]["keep"] == ["level"]
    bad = runner.invoke(app, [*args, "--label", "nodes"])
    assert bad.exit_code == 2 and "no annotation field 'nodes'" in bad.output
