"""Crop datasets cut by mask (segment -> crop by mask -> regress): each image's box is its hand mask's extent, cut
as the served ``crop: mask`` step cuts it, labelled by its bone age (months) with its sex, patient and split kept;
bad per-image tables refused naming the row and field."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.decode import decode_image
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.maskfiles import read_mask_image
from radflow.data.split import split_dataset
from radflow.data.synth import synth_hand
from radflow.data.synth.truth import mask_path
from radflow.errors import ConfigError, DataError
from radflow.runtime.masks import bounding_box
from radflow.workflow.crops import CROPS_FILE, build_crops
from radflow.workflow.glue import crop_masks, resize_crops

N, SIZE, CROP = 8, 48, 24
CSV = "boneage-training-dataset.csv"


@pytest.fixture(scope="module")
def hands(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the hand phantoms' folder, their segmentation dataset ingested and split)."""
    root = tmp_path_factory.mktemp("hands")
    synth_hand(root / "src", N, seed=3, size=SIZE, workers=1, masks=True)
    ingest(root / "src", "masks", root / "seg", IngestOptions(size=32, workers=1))
    split_dataset(root / "seg", val=0.25, test=0.25, seed=0)
    return root / "src", root / "seg"


def test_each_hand_is_cut_at_its_mask_extent_as_the_served_crop_by_mask_step(
    hands: tuple[Path, Path], tmp_path: Path
) -> None:
    src, seg = hands
    info = build_crops(
        seg, tmp_path / "age", src / CSV, "boneage", masks=src, task="regression", sex_field="male", size=CROP,
        margin=0.05,
    )  # fmt: skip
    assert info["task"] == "regression" and info["labels"] == ["boneage"] and info["counts"]["images"] == N
    assert info["crops"]["structure"] == "Hand" and "crop_masks" in info["crops"]["cut"]
    crops = Dataset.open(tmp_path / "age")
    where = pd.read_parquet(tmp_path / "age" / CROPS_FILE).set_index("image_id")
    source = Dataset.open(seg).manifest.set_index("image_id")
    with (src / CSV).open() as fh:
        truth = {row["id"]: row for row in csv.DictReader(fh)}
    by_sha = {str(source.loc[i, "sha256"]): i for i in source.index}
    seen = 0
    for k, row in enumerate(crops.manifest.to_dict("records")):
        image_id = where.loc[row["image_id"], "source_image_id"]
        # patient and split are the segmentation image's: held-out hands give held-out crops
        assert row["patient_id"] == source.loc[image_id, "patient_id"]
        assert row["split"] == source.loc[image_id, "split"] == row["official_split"]
        for rid, values in truth.items():
            png = src / "boneage-training-dataset" / f"{rid}.png"
            if by_sha.get(hashlib.sha256(png.read_bytes()).hexdigest()) != image_id:
                continue
            seen += 1
            assert row["boneage"] == pytest.approx(float(values["boneage"]))
            assert row["sex"] == ("M" if values["male"] == "True" else "F")
            # the crop: the true mask's extent (the bbox a segmentation answer gives), cut by the workflow's glue
            mask = read_mask_image(mask_path(src, f"boneage-training-dataset/{rid}.png", "Hand")) != 0
            bbox = bounding_box(mask)
            assert bbox is not None
            x, y, w, h = bbox
            assert [where.loc[row["image_id"], c] for c in ("x0", "y0", "x1", "y1")] == [x, y, x + w, y + h]
            pixels = decode_image(png.read_bytes()).pixels
            served = resize_crops(crop_masks(pixels, [{"structure": "Hand", "bbox": bbox}], 0.05), CROP)[0]
            assert served.box == [where.loc[row["image_id"], c] for c in ("cut_x0", "cut_y0", "cut_x1", "cut_y1")]
            assert np.array_equal(crops.image(k), served.pixels)
    assert seen == N


def _table(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["id", "boneage", "male"], *rows])
    return path


def test_bad_per_image_tables_are_refused_naming_row_and_field(hands: tuple[Path, Path], tmp_path: Path) -> None:
    src, seg = hands
    first = sorted((src / "boneage-training-dataset").glob("*.png"))[0].stem
    run = dict(masks=src, task="regression", sex_field="male", size=CROP)
    with pytest.raises(DataError, match=r"row 2: field 'boneage' must be a number, got 'old'"):
        build_crops(seg, tmp_path / "a", _table(src / "bad-age.csv", [[first, "old", "True"]]), "boneage", **run)
    with pytest.raises(DataError, match=r"row 2: field 'male' must be True/False"):
        build_crops(seg, tmp_path / "b", _table(src / "bad-sex.csv", [[first, "100", "yes"]]), "boneage", **run)
    twice = _table(src / "twice.csv", [[first, "100", "True"], [first, "90", "True"]])
    with pytest.raises(DataError, match=r"row 3: image '\d+' is named twice \(also .*row 2\)"):
        build_crops(seg, tmp_path / "c", twice, "boneage", **run)
    with pytest.raises(DataError, match=r"no column 'age'.*boneage"):
        build_crops(seg, tmp_path / "d", src / CSV, "age", **run)
    with pytest.raises(DataError, match=r"no structure 'Hnd'.*Did you mean 'Hand'"):
        build_crops(seg, tmp_path / "e", src / CSV, "boneage", structure="Hnd", **run)
    with pytest.raises(ConfigError, match="give masks"):
        build_crops(seg, tmp_path / "f", src / CSV, "boneage", structure="Hand")
    # an image with no mask file is skipped and listed, not cut
    (src / "masks" / "boneage-training-dataset" / first / "Hand.png").rename(src / "Hand.png.away")
    try:
        info = build_crops(seg, tmp_path / "g", src / CSV, "boneage", **run)
    finally:
        (src / "Hand.png.away").rename(src / "masks" / "boneage-training-dataset" / first / "Hand.png")
    assert info["counts"]["images"] == N - 1 and "no Hand mask" in info["skipped"][0]["error"]


def test_the_crops_command_cuts_by_mask(hands: tuple[Path, Path], tmp_path: Path) -> None:
    src, seg = hands
    args = ["workflow", "crops", str(seg), "-o", str(tmp_path / "age"), "--boxes", str(src / CSV), "--label"]
    args += ["boneage", "--masks", str(src), "--task", "regression", "--sex-field", "male", "--size", str(CROP)]
    made = CliRunner().invoke(app, args)
    assert made.exit_code == 0, made.output
    assert f"{N} crops of {N} images" in made.output and "by the Hand mask" in made.output
    wrong = CliRunner().invoke(app, [*args[:-2], "--task", "regresion"])
    assert wrong.exit_code == 2 and "Did you mean 'regression'" in wrong.output
