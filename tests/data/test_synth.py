"""Phantom generators: exact dataset layouts, determinism, label statistics and findings visible in the pixels."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.decode import decode_file
from radflow.data.labels import CHEXPERT_LABELS
from radflow.data.synth import FAKE_PHI_MARKERS, chest_shape, hand_shape, synth_chest, synth_hand
from radflow.errors import ConfigError

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)
DRAWN = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation")
PATH_RE = re.compile(
    r"^(?P<root>[^/]+)/(?P<split>train|valid)/(?P<patient>patient\d{5})/study(?P<study>\d+)/view1_frontal\.(png|dcm)$"
)


def _rows(out: Path, split: str) -> list[dict[str, str]]:
    with (out / f"{split}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _all_rows(out: Path) -> list[dict[str, str]]:
    return _rows(out, "train") + _rows(out, "valid")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def chest_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred tiny phantoms: enough for prevalence bands and pixel statistics."""
    out = tmp_path_factory.mktemp("chest") / "CheXpert-v1.0-phantom"
    synth_chest(out, n=400, seed=7, size=48, workers=2)
    return out


def _mean_region(out: Path, rows: list[dict[str, str]], x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    values = []
    for row in rows:
        img = cv2.imread(str(out.parent / row["Path"]), cv2.IMREAD_UNCHANGED).astype(np.float64) / 255
        h, w = img.shape
        values.append(img[int(y[0] * h) : int(y[1] * h), int(x[0] * w) : int(x[1] * w)].mean())
    return np.array(values)


def test_chest_writes_chexpert_layout(chest_set: Path) -> None:
    for split in ("train", "valid"):
        assert (chest_set / f"{split}.csv").read_text().splitlines()[0] == CHEXPERT_HEADER
    rows = _all_rows(chest_set)
    assert len(rows) == 400
    for split in ("train", "valid"):
        for row in _rows(chest_set, split):
            m = PATH_RE.match(row["Path"])
            assert m and m["root"] == chest_set.name and m["split"] == split, row["Path"]
            assert (chest_set.parent / row["Path"]).is_file()
            assert row["Sex"] in ("Male", "Female") and 18 <= int(row["Age"]) <= 90
            assert row["Frontal/Lateral"] == "Frontal" and row["AP/PA"] in ("AP", "PA")
            assert all(row[k] in ("1.0", "0.0", "-1.0", "") for k in CHEXPERT_LABELS)
    img = cv2.imread(str(chest_set.parent / rows[0]["Path"]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape == chest_shape(48) == (58, 48)  # not square: pad-to-square is exercised


def test_chest_patients_have_several_studies_and_valid_patients_are_held_out(chest_set: Path) -> None:
    def patients(rows: list[dict[str, str]]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in rows:
            p = PATH_RE.match(row["Path"])["patient"]  # type: ignore[index]
            counts[p] = counts.get(p, 0) + 1
        return counts

    train, valid = patients(_rows(chest_set, "train")), patients(_rows(chest_set, "valid"))
    assert not set(train) & set(valid)
    assert max(train.values()) >= 3 and sum(c > 1 for c in train.values()) >= len(train) // 4
    assert 0.05 <= len(valid) / (len(train) + len(valid)) <= 0.15  # valid_fraction=0.1 of patients


def test_chest_label_prevalence_and_uncertainty(chest_set: Path) -> None:
    rows = _all_rows(chest_set)
    for label in DRAWN:
        share = sum(r[label] == "1.0" for r in rows) / len(rows)
        assert 0.05 <= share <= 0.35, (label, share)
    assert sum(r[k] == "-1.0" for r in rows for k in DRAWN) >= 20  # the labeller hedges on subtle findings
    pathology = [k for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices")]
    for r in rows:
        # CheXpert's rule: No Finding exactly when no pathology is positive or uncertain.
        assert (r["No Finding"] == "1.0") == (not any(r[k] in ("1.0", "-1.0") for k in pathology))
        if "1.0" in (r["Lung Lesion"], r["Consolidation"]):
            assert r["Lung Opacity"] == "1.0"
    assert 0.25 <= sum(r["No Finding"] == "1.0" for r in rows) / len(rows) <= 0.7


def test_chest_findings_are_drawn(chest_set: Path) -> None:
    rows = _all_rows(chest_set)

    def split(label: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        return [r for r in rows if r[label] == "1.0"], [r for r in rows if r[label] in ("", "0.0")]

    # An enlarged heart fills the left mid-zone (image right) where a normal heart leaves lung.
    pos, neg = split("Cardiomegaly")
    box = ((0.72, 0.8), (0.5, 0.62))
    assert _mean_region(chest_set, pos, *box).mean() > _mean_region(chest_set, neg, *box).mean() + 0.08
    # Fluid at the bases makes the costophrenic regions opaque.
    pos, neg = split("Pleural Effusion")

    def bases(rs: list[dict[str, str]]) -> np.ndarray:
        y = (0.64, 0.74)
        return np.maximum(_mean_region(chest_set, rs, (0.12, 0.28), y), _mean_region(chest_set, rs, (0.72, 0.88), y))

    assert bases(pos).mean() > bases(neg).mean() + 0.06


def test_chest_same_seed_same_bytes_for_any_worker_count(tmp_path: Path) -> None:
    a, b, c = (tmp_path / name / "CheXpert-phantom" for name in ("a", "b", "c"))
    synth_chest(a, n=40, seed=3, size=40, dicom_fraction=0.3, workers=1)
    synth_chest(b, n=40, seed=3, size=40, dicom_fraction=0.3, workers=2)
    synth_chest(c, n=40, seed=4, size=40, dicom_fraction=0.3, workers=1)
    files_a = _files(a)
    assert files_a == _files(b)
    assert files_a != _files(c)


def test_dicom_fraction_writes_dicom_with_fake_phi_that_pngs_never_hold(tmp_path: Path) -> None:
    out = tmp_path / "CheXpert-phantom"
    info = synth_chest(out, n=60, seed=5, size=40, dicom_fraction=0.5, workers=1)
    rows = _all_rows(out)
    dcm = [r for r in rows if r["Path"].endswith(".dcm")]
    assert info["dicom_images"] == len(dcm) == 30
    markers = [m.encode() for m in FAKE_PHI_MARKERS]
    for r in rows:
        data = (out.parent / r["Path"]).read_bytes()
        if r["Path"].endswith(".dcm"):
            assert all(m in data for m in markers), r["Path"]
        else:
            assert not any(m in data for m in markers)
    seen = {"bits": set(), "photometric": set()}
    for r in dcm:
        ds = pydicom.dcmread(out.parent / r["Path"])
        assert ds.PatientID == PATH_RE.match(r["Path"])["patient"]  # type: ignore[index]
        assert (
            ds.ViewPosition == r["AP/PA"] and ds.PatientSex == r["Sex"][0] and ds.PatientAge == f"{int(r['Age']):03d}Y"
        )
        seen["bits"].add(int(ds.BitsStored))
        seen["photometric"].add(str(ds.PhotometricInterpretation))
    assert seen["bits"] <= {12, 14, 16} and len(seen["bits"]) >= 2
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    # The DICOM chain (rescale, window, MONOCHROME1 inversion) shows the same picture as the PNG would.
    png = tmp_path / "png" / "CheXpert-phantom"
    synth_chest(png, n=60, seed=5, size=40, dicom_fraction=0.0, workers=1)
    for r in dcm[:10]:
        shown = decode_file(out.parent / r["Path"]).pixels
        ref = cv2.imread(str(png.parent / r["Path"].replace(".dcm", ".png")), cv2.IMREAD_UNCHANGED) / 255.0
        assert np.abs(shown - ref).max() < 0.01


def test_hand_writes_rsna_layout_with_visible_bone_age(tmp_path: Path) -> None:
    out = tmp_path / "boneage"
    info = synth_hand(out, n=80, seed=2, size=64, workers=2)
    lines = (out / "boneage-training-dataset.csv").read_text().splitlines()
    assert lines[0] == "id,boneage,male" and len(lines) == 81
    ages, areas = [], []
    for line in lines[1:]:
        image_id, months, male = line.split(",")
        assert male in ("True", "False") and 0 <= int(months) <= 228
        img = cv2.imread(str(out / "boneage-training-dataset" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == hand_shape(64)
        ages.append(int(months))
        areas.append((img > 60).mean())  # the hand (soft tissue and bone) grows with bone age
    assert 100 <= info["boneage_mean"] <= 150
    rank = np.argsort(np.argsort(ages)), np.argsort(np.argsort(areas))
    assert np.corrcoef(*rank)[0, 1] > 0.6


def test_hand_same_seed_same_bytes_for_any_worker_count(tmp_path: Path) -> None:
    synth_hand(tmp_path / "a", n=24, seed=1, size=40, workers=1)
    synth_hand(tmp_path / "b", n=24, seed=1, size=40, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"n": 0}, "--n"),
        ({"n": -3}, "--n"),
        ({"dicom_fraction": 1.5}, "--dicom-fraction"),
        ({"dicom_fraction": -0.1}, "--dicom-fraction"),
        ({"size": 8}, "--size"),
        ({"valid_fraction": 1.0}, "--valid-fraction"),
    ],
)
def test_bad_arguments_name_the_flag(tmp_path: Path, kwargs: dict[str, float], flag: str) -> None:
    args = {"n": 4, "seed": 0, "size": 32} | kwargs
    with pytest.raises(ConfigError, match=flag):
        synth_chest(tmp_path / "x", **args)  # type: ignore[arg-type]
    if set(kwargs) <= {"n", "size"}:
        with pytest.raises(ConfigError, match=flag):
            synth_hand(tmp_path / "y", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_cli_synth_chest_json_and_bad_flag(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "chest", str(tmp_path / "ds"), "--n", "6", "--size", "32", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["images"] == 6 and (tmp_path / "ds" / "train.csv").is_file()
    result = runner.invoke(app, ["synth", "hand", str(tmp_path / "h"), "--n", "0"])
    assert result.exit_code == 2 and "--n" in result.output
