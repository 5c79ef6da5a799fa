from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.decode import decode_file
from radflow.data.ingest import SALT_FILE, IngestOptions, ingest, source_paths
from radflow.data.preprocess import prepare_pixels
from radflow.errors import ConfigError, DataError
from tests.data.sources_fixtures import write_boneage, write_chexpert, write_folder, write_nih


def test_chexpert_ingest_writes_manifest_shards_and_metadata(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx", patients=4, studies=2)
    info = ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32))
    ds = Dataset.open(tmp_path / "ds")
    assert info["counts"]["images"] == 8 and info["counts"]["patients"] == 4 and info["counts"]["studies"] == 8
    assert len(ds.labels) == 14 and ds.task == "multilabel"
    assert ds.manifest["official_split"].tolist().count("test") == 2
    # patient ids are keyed hashes, never the source's identifier
    assert not ds.manifest["patient_id"].str.contains("patient").any()
    assert ds.manifest["patient_id"].nunique() == 4
    # pixels are the one preprocessing of the decoded file
    path = src.resolve() / "train/patient00001/study1/view1_frontal.png"
    key = next(k for k, p in source_paths(tmp_path / SALT_FILE).items() if p == path)
    row = ds.manifest.index[ds.manifest["source_key"] == key][0]
    expected = prepare_pixels(decode_file(path).pixels, 32)
    np.testing.assert_array_equal(ds.image(row), expected)
    assert info["prevalence"]["all"]["Cardiomegaly"] == {"positive": 4, "known": 8}
    assert "label 'Fracture' has no positive image" in info["warnings"]


def test_ingest_is_deterministic_and_hashes_stable_across_runs(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    first = ingest(src, "chexpert", tmp_path / "a", IngestOptions(size=32, salt_file=tmp_path / "salt"))
    second = ingest(src, "chexpert", tmp_path / "b", IngestOptions(size=32, salt_file=tmp_path / "salt"))
    assert first["version"] == second["version"]
    a, b = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "b")
    assert a.manifest["patient_id"].tolist() == b.manifest["patient_id"].tolist()
    np.testing.assert_array_equal(a.images(range(8)), b.images(range(8)))
    other = ingest(src, "chexpert", tmp_path / "c", IngestOptions(size=32, salt_file=tmp_path / "other-salt"))
    c = Dataset.open(tmp_path / "c")
    assert set(c.manifest["patient_id"]).isdisjoint(a.manifest["patient_id"])
    assert other["version"] != first["version"]


def test_reingest_reuses_unchanged_images(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32))
    info = ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32))
    assert info["ingest"] == {"reused_images": 8, "decoded_images": 0, "workers": info["ingest"]["workers"]}
    resized = ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=24))
    assert resized["ingest"]["reused_images"] == 0
    assert Dataset.open(tmp_path / "ds").images([0]).shape == (1, 24, 24)


def test_corrupt_image_is_skipped_and_listed_strict_fails(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    bad = src / "train/patient00002/study1/view1_frontal.png"
    bad.write_bytes(bad.read_bytes()[:60])
    info = ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32))
    assert info["counts"]["images"] == 7
    (entry,) = info["skipped"]
    assert entry["row"] == 4 and entry["table"] == "train.csv"
    assert source_paths(tmp_path / SALT_FILE)[entry["source_key"]] == bad.resolve()
    assert entry["error"].startswith("corrupt or truncated PNG")
    with pytest.raises(DataError, match=r"patient00002/study1/view1_frontal\.png.*corrupt or truncated"):
        ingest(src, "chexpert", tmp_path / "ds2", IngestOptions(size=32, strict=True))


def test_failed_reingest_keeps_previous_dataset(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    before = ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32))
    for png in src.rglob("*.png"):
        png.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match="could be decoded"):
        ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.version == before["version"] and ds.images(range(8)).shape == (8, 32, 32)


def test_duplicate_files_are_ingested_once(tmp_path: Path) -> None:
    src = write_folder(tmp_path / "f")
    (src / "normal" / "copy.png").write_bytes((src / "abnormal" / "img0.png").read_bytes())
    info = ingest(src, "folder", tmp_path / "ds", IngestOptions(size=32))
    assert info["counts"]["images"] == 6
    assert any("duplicate of" in s["error"] for s in info["skipped"])


def test_nih_boneage_and_folder_ingest(tmp_path: Path) -> None:
    nih = ingest(write_nih(tmp_path / "nih"), "nih", tmp_path / "nih-ds", IngestOptions(size=32))
    assert nih["counts"]["images"] == 6 and nih["counts"]["patients"] == 3
    bone = ingest(write_boneage(tmp_path / "rsna"), "boneage", tmp_path / "bone-ds", IngestOptions(size=32))
    assert bone["task"] == "regression" and bone["prevalence"]["all"]["mean"] == 70.0
    bone_ds = Dataset.open(tmp_path / "bone-ds")
    assert bone_ds.targets().ravel().tolist() == [30, 50, 70, 90, 110]
    assert bone_ds.manifest["sex"].tolist() == ["F", "M", "F", "M", "F"]
    folder = ingest(write_folder(tmp_path / "f"), "folder", tmp_path / "f-ds", IngestOptions(size=32))
    assert folder["task"] == "multiclass" and folder["counts"]["patients"] == 6


def test_uncertain_ignore_stores_nan(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32, uncertain="ignore", labels="Edema,Cardiomegaly"))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.labels == ["Edema", "Cardiomegaly"]
    assert int(np.isnan(ds.targets()[:, 0]).sum()) == 4


def test_parallel_ingest_matches_serial(tmp_path: Path) -> None:
    src = write_nih(tmp_path / "nih", n=60)
    serial = ingest(src, "nih", tmp_path / "a", IngestOptions(size=32, workers=1, salt_file=tmp_path / "s"))
    parallel = ingest(src, "nih", tmp_path / "b", IngestOptions(size=32, workers=2, salt_file=tmp_path / "s"))
    assert serial["version"] == parallel["version"]
    np.testing.assert_array_equal(
        Dataset.open(tmp_path / "a").images(range(60)), Dataset.open(tmp_path / "b").images(range(60))
    )


def test_empty_source_is_a_clear_error(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    for png in src.rglob("*.png"):
        png.unlink()
    with pytest.raises(DataError, match=r"no images to ingest.*image file missing"):
        ingest(src, "chexpert", tmp_path / "ds")


def test_cli_ingest_json_and_error_exit(tmp_path: Path) -> None:
    src = write_boneage(tmp_path / "rsna")
    runner = CliRunner()
    result = runner.invoke(
        app, ["ingest", str(src), "--format", "boneage", "--out", str(tmp_path / "ds"), "--size", "32", "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["counts"]["images"] == 5 and not math.isnan(info["prevalence"]["all"]["mean"])
    bad = runner.invoke(app, ["ingest", str(src), "--format", "bonage", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "Did you mean 'boneage'" in bad.output


def test_salt_file_inside_the_dataset_is_refused(tmp_path: Path) -> None:
    src = write_folder(tmp_path / "f")
    with pytest.raises(ConfigError, match=r"salt.*inside the dataset"):
        ingest(src, "folder", tmp_path / "ds", IngestOptions(size=32, salt_file=tmp_path / "ds" / "salt"))
    assert not (tmp_path / "ds" / "salt").exists()


def test_a_format_1_dataset_with_verbatim_paths_is_refused_and_reingest_replaces_it(tmp_path: Path) -> None:
    src = write_folder(tmp_path / "f")
    ingest(src, "folder", tmp_path / "ds", IngestOptions(size=32))
    meta = tmp_path / "ds" / "dataset.json"
    meta.write_text(meta.read_text().replace('"format_version": 2', '"format_version": 1'))
    with pytest.raises(DataError, match=r"format 1 .*source paths verbatim.*re-ingest"):
        Dataset.open(tmp_path / "ds")
    info = ingest(src, "folder", tmp_path / "ds", IngestOptions(size=32))
    assert info["format_version"] == 2 and "source_key" in Dataset.open(tmp_path / "ds").manifest
