"""Every source reader resolves image paths inside the source folder it is given, and nowhere else."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from radflow.data.dataset import Dataset
from radflow.data.ingest import SALT_FILE, IngestOptions, ingest, source_paths
from radflow.data.sources import read_source
from radflow.data.sources.paths import AmbiguousSourcePath
from radflow.errors import DataError
from tests.data.sources_fixtures import write_boneage, write_chexpert, write_folder, write_nih, write_png

VIEW = "train/patient00001/study1/view1_frontal.png"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_copy_of_a_chexpert_source_is_read_as_the_copy_not_its_sibling(tmp_path: Path) -> None:
    original = write_chexpert(tmp_path / "CheXpert-v1.0-small")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)  # its CSV paths still start with "CheXpert-v1.0-small/"
    corrupt = copy / "train/patient00002/study1/view1_frontal.png"
    corrupt.write_bytes(corrupt.read_bytes()[:60])
    (copy / "train/patient00003/study2/view1_frontal.png").unlink()
    info = ingest(copy, "chexpert", tmp_path / "ds", IngestOptions(size=32, workers=1))
    assert info["counts"]["images"] == 6 and info["ingest"]["decoded_images"] == 6
    errors = sorted(entry["error"] for entry in info["skipped"])
    assert len(errors) == 2
    assert errors[0].startswith("corrupt or truncated PNG")
    assert errors[1].startswith("image file missing (tried: as written") and "without its first folder" in errors[1]
    assert info["source"]["path"] == str(copy.resolve())
    # every decoded image is the copy's own file
    located = source_paths(tmp_path / SALT_FILE)
    manifest = Dataset.open(tmp_path / "ds").manifest
    for key, sha in zip(manifest["source_key"], manifest["sha256"], strict=True):
        assert located[key].is_relative_to(copy.resolve()) and _sha(located[key]) == sha


def test_a_path_that_means_two_files_is_an_error_naming_row_path_and_rules(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "CheXpert-v1.0-small")
    write_png(src / "CheXpert-v1.0-small" / VIEW, seed=99)  # a nested second copy of one image
    with pytest.raises(AmbiguousSourcePath) as caught:
        read_source("chexpert", src)
    message = str(caught.value)
    assert "train.csv, row 2" in message and f"'CheXpert-v1.0-small/{VIEW}'" in message
    assert f"as written, below the source folder -> CheXpert-v1.0-small/{VIEW}" in message
    assert f"without its first folder (the dataset's own name), below the source folder -> {VIEW}" in message


def test_rows_that_mix_two_layouts_are_an_error(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    nested = src / "cx" / "train/patient00001/study1"
    nested.mkdir(parents=True)
    shutil.move(src / VIEW, nested / "view1_frontal.png")
    with pytest.raises(AmbiguousSourcePath, match=r"different rules.*row 2.*as written.*row 3.*first folder"):
        read_source("chexpert", src)


def test_absolute_climbing_and_outward_linked_paths_are_skipped_never_read(tmp_path: Path) -> None:
    outside = write_png(tmp_path / "elsewhere" / "patient00009/study1/view1_frontal.png", seed=7)
    src = write_chexpert(tmp_path / "cx", patients=2, valid_patients=0)
    link = src / VIEW
    link.unlink()
    link.symlink_to(outside)
    csv = src / "train.csv"
    lines = csv.read_text().splitlines()
    row = lines[2].split(",", 1)[1]
    lines += [f"{outside},{row}", f"cx/../elsewhere/patient00009/study1/view1_frontal.png,{row}"]
    csv.write_text("\n".join(lines) + "\n")
    table = read_source("chexpert", src)
    assert all(r.path.resolve().is_relative_to(src.resolve()) for r in table.records)
    reasons = {entry["row"]: entry["error"] for entry in table.skipped}
    assert reasons[2].startswith("image file links outside the source folder; not read")
    assert reasons[6].startswith("absolute image path")
    assert reasons[7].startswith("image path climbs out of its folder with '..'")
    with pytest.raises(DataError, match=r"train\.csv, row 2: image file links outside.*--strict"):
        ingest(src, "chexpert", tmp_path / "ds", IngestOptions(size=32, strict=True))


def test_nih_and_boneage_names_found_twice_are_an_error(tmp_path: Path) -> None:
    nih = write_nih(tmp_path / "nih")
    shutil.copy(nih / "images_001/images/00000001_000.png", nih / "00000001_000.png")
    with pytest.raises(AmbiguousSourcePath, match=r"row 3: '00000001_000\.png' could be 2 files"):
        read_source("nih", nih)
    rsna = write_boneage(tmp_path / "rsna")
    write_png(rsna / "boneage-training-dataset" / "1378.jpg", seed=5)
    with pytest.raises(AmbiguousSourcePath, match=r"row 3: '1378' could be 2 files.*1378\.png.*1378\.jpg"):
        read_source("boneage", rsna)


def test_nih_image_linked_from_outside_is_skipped(tmp_path: Path) -> None:
    nih = write_nih(tmp_path / "nih")
    image = nih / "images_001/images/00000002_000.png"
    outside = tmp_path / "outside.png"
    shutil.move(image, outside)
    image.symlink_to(outside)
    table = read_source("nih", nih)
    assert len(table.records) == 5
    (entry,) = table.skipped
    assert entry["row"] == 4 and entry["error"].startswith("image file links outside the source folder")


def test_folder_and_dicom_walks_list_links_pointing_out_and_skip_them(tmp_path: Path) -> None:
    outside = write_png(tmp_path / "private" / "x.png", seed=3)
    (tmp_path / "private" / "more").mkdir()
    write_png(tmp_path / "private" / "more" / "y.png", seed=4)
    src = write_folder(tmp_path / "f")
    (src / "normal" / "linked.png").symlink_to(outside)
    (src / "normal" / "linked-dir").symlink_to(tmp_path / "private" / "more")
    table = read_source("folder", src)
    assert len(table.records) == 6
    assert {e["path"] for e in table.skipped} == {"normal/linked.png", "normal/linked-dir"}
    assert {e["error"] for e in table.skipped} == {"links outside the source folder; not read"}
    dicom = tmp_path / "pacs"
    dicom.mkdir()
    (dicom / "a.dcm").symlink_to(outside)
    with pytest.raises(DataError, match=r"no images to ingest.*links outside the source folder"):
        ingest(dicom, "dicom", tmp_path / "ds")
