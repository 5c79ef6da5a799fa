"""Spine MR phantoms (``radflow synth spine``): valid MR DICOM, exact vertebra boxes, drawn nodes, a box source."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.synth.spine import (
    SPINE_COLUMNS,
    SPINE_LEVELS,
    VERTEBRA_LABEL,
    _node_centre,
    _plan,
    _pose_matrix,
    _render,
    synth_spine,
    vertebra_masks,
)
from radflow.errors import ConfigError
from tests.debian import ensure_debian_package

SIZE = 128


@pytest.fixture(scope="module")
def spine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spine") / "spine"
    synth_spine(out, 8, seed=5, size=SIZE, workers=1)
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "vertebrae.csv").open() as f:
        return list(csv.DictReader(f))


def test_each_slice_is_an_mr_image_dciodvfy_accepts(spine: Path) -> None:
    ensure_debian_package("dicom3tools", lambda: shutil.which("dciodvfy") is not None)
    files = sorted(spine.glob("images/*/*/sag_t2.dcm"))
    assert len(files) == 8
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert [float(v) for v in ds.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]  # sagittal
    assert float(ds.PixelSpacing[0]) == pytest.approx(300.0 / SIZE) and ds.pixel_array.shape == (SIZE, SIZE)
    assert "RescaleSlope" not in ds and "PresentationLUTShape" not in ds
    done = subprocess.run(["dciodvfy", "-new", str(files[0])], capture_output=True, text=True, timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_the_same_seed_writes_the_same_bytes_for_any_worker_count(spine: Path, tmp_path: Path) -> None:
    synth_spine(tmp_path / "again", 8, seed=5, size=SIZE, workers=2)
    for path in sorted(spine.rglob("*")):
        if path.is_file():
            assert (tmp_path / "again" / path.relative_to(spine)).read_bytes() == path.read_bytes(), path


def test_boxes_are_the_drawn_bodies_and_each_node_is_drawn_inside_its_vertebra(spine: Path) -> None:
    rows = _rows(spine)
    assert list(rows[0]) == list(SPINE_COLUMNS)
    studies = _plan(8, 5, SIZE)
    assert len(rows) == 8 * len(SPINE_LEVELS)
    nodes = 0
    for s in studies:
        mine = [r for r in rows if r["path"] == s.dicom_path]
        assert [r["level"] for r in mine] == list(SPINE_LEVELS)
        img = _render(s)
        m = _pose_matrix(s)
        for v, mask, row in zip(s.vertebrae, vertebra_masks(s), mine, strict=True):
            x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
            ys, xs = np.nonzero(mask)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # exact, pixel edges
            assert int(row["schmorl"]) == (v.node is not None) and row["endplate"] == (v.node or "")
            if v.node is None:
                continue
            nodes += 1
            cx, cy, _ = _node_centre(v, SIZE)
            px, py = m[:, :2] @ [cx, cy] + m[:, 2]
            assert x <= px <= x + w and y - 1 <= py <= y + h + 1  # on its own body's endplate
            # disc signal herniated into the body: brighter than the body's marrow around it
            marrow = np.median(img[mask])
            r = max(1, round(v.node_depth * v.height * SIZE * s.pose[1] / 2))
            inside = img[int(py) - r : int(py) + r + 1, int(px) - r : int(px) + r + 1]
            if v.node_depth > 0.15:  # the deep ones are plain to see; the shallow ones run down to barely
                assert inside.max() > marrow + 0.1
    assert nodes > 0


def test_the_folder_is_a_coco_detection_source_with_patients_from_the_dicom(spine: Path, tmp_path: Path) -> None:
    coco = json.loads((spine / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == [VERTEBRA_LABEL]
    assert {a["level"] for a in coco["annotations"]} == set(SPINE_LEVELS)
    info = ingest(spine, "coco-boxes", tmp_path / "ds", IngestOptions(size=SIZE, workers=1))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.task == "detection" and ds.labels == [VERTEBRA_LABEL] and info["skipped"] == []
    boxes = pd.read_parquet(tmp_path / "ds" / "boxes.parquet")
    assert len(boxes) == len(coco["annotations"]) and set(boxes["label"]) == {VERTEBRA_LABEL}
    patients = {r["patient_id"] for r in _rows(spine)}
    assert ds.manifest["patient_id"].nunique() == len(patients)  # studies of one patient share a key
    assert not set(ds.manifest["patient_id"]).intersection(patients)  # the key is radflow's, not the header's


def test_the_cli_writes_and_summarises_and_bad_sizes_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "spine", str(tmp_path / "s"), "--n", "2", "--size", "64", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "spine" and info["images"] == 2 and info["vertebrae"] == 12
    with pytest.raises(ConfigError):
        synth_spine(tmp_path / "bad", 0, seed=0, size=SIZE)
