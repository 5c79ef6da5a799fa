"""Patient-level stratified split: no leakage, requested fractions, rare labels everywhere, reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import SPLITS, Dataset, ShardWriter, write_dataset
from radflow.data.preprocess import PreprocessSpec
from radflow.data.split import deal_by_target, iterative_stratification, split_dataset
from radflow.errors import ConfigError, DataError, NotFoundError

SIZE = 16
LABELS = ["Common", "Medium", "Rare", "VeryRare"]


def _write(root: Path, frame: pd.DataFrame, labels: list[str], task: str) -> Path:
    """Write ``frame`` (patient_id, study_id, official_split + label columns) as a dataset with random pixels."""
    rng = np.random.default_rng(123)
    root.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(root, SIZE, shard_images=64)
    locations = [writer.add(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)) for _ in range(len(frame))]
    writer.close()
    manifest = frame.copy().reset_index(drop=True)
    n = len(manifest)
    manifest["image_id"] = [f"{i:020x}" for i in range(n)]
    manifest["source_key"] = [f"{i:016x}" for i in range(n)]
    manifest["sha256"] = [f"{i:064x}" for i in range(n)]
    for column in ("view", "projection", "sex", "split"):
        manifest[column] = ""
    manifest["age"] = np.nan
    manifest["shard"] = [s for s, _ in locations]
    manifest["offset"] = [o for _, o in locations]
    if "official_split" not in manifest:
        manifest["official_split"] = ""
    write_dataset(
        root,
        manifest,
        labels=labels,
        task=task,  # type: ignore[arg-type]
        spec=PreprocessSpec(size=SIZE),
        source={"format": "test", "path": str(root)},
        extra={"ingest": {"decoded_images": n}},
    )
    return root


def _leaky_frame(seed: int = 0, patients: int = 40) -> pd.DataFrame:
    """Patients with 1-12 studies (1-2 images each); rare labels sit in a handful of patients.

    A patient's rare finding shows on most of its images, so putting patients (not images) in
    the right split is what decides whether val and test see the rare labels at all.
    """
    rng = np.random.default_rng(seed)
    rows = []
    rare_patients = set(rng.choice(patients, 6, replace=False).tolist())
    very_rare_patients = set(rng.choice(sorted(set(range(patients)) - rare_patients), 3, replace=False).tolist())
    for p in range(patients):
        for s in range(int(rng.integers(1, 13))):
            for _ in range(int(rng.integers(1, 3))):
                rows.append(
                    {
                        "patient_id": f"pat{p:03d}",
                        "study_id": f"pat{p:03d}-{s}",
                        "Common": float(rng.random() < 0.4),
                        "Medium": float(rng.random() < 0.15) if rng.random() > 0.1 else np.nan,
                        "Rare": float(p in rare_patients and rng.random() < 0.8),
                        "VeryRare": float(p in very_rare_patients and rng.random() < 0.8),
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture()
def leaky(tmp_path: Path) -> Path:
    return _write(tmp_path / "ds", _leaky_frame(), LABELS, "multilabel")


def _patient_splits(manifest: pd.DataFrame) -> pd.Series:
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    return per_patient


def _fractions(manifest: pd.DataFrame) -> dict[str, float]:
    return {s: float((manifest["split"] == s).mean()) for s in SPLITS}


def _label_deviation(manifest: pd.DataFrame, labels: list[str]) -> float:
    """Mean absolute difference between a label's positive share in a split and in the whole dataset."""
    deviations = []
    for label in labels:
        overall = (manifest[label] == 1).mean()
        for s in SPLITS:
            rows = manifest[manifest["split"] == s]
            deviations.append(abs((rows[label] == 1).mean() - overall) / overall)
    return float(np.mean(deviations))


def _random_patient_split(manifest: pd.DataFrame, val: float, test: float, seed: int) -> pd.DataFrame:
    """The baseline: shuffle patients, cut at the requested image fractions (no stratification)."""
    rng = np.random.default_rng(seed)
    sizes = manifest.groupby("patient_id").size()
    order = sizes.index.to_numpy()[rng.permutation(len(sizes))]
    cumulative = sizes[order].cumsum().to_numpy() / len(manifest)
    names = np.where(cumulative <= test, "test", np.where(cumulative <= test + val, "val", "train"))
    out = manifest.copy()
    out["split"] = out["patient_id"].map(dict(zip(order, names, strict=True)))
    return out


def test_patients_never_span_splits_and_fractions_follow_request(leaky: Path) -> None:
    summary = split_dataset(leaky, val=0.15, test=0.2, seed=3)
    manifest = Dataset.open(leaky).manifest
    assert set(manifest["split"]) == set(SPLITS)
    assert (_patient_splits(manifest) == 1).all()
    fractions = _fractions(manifest)
    # 40 patients of up to 24 images each: a split can be off by about one patient.
    assert fractions["val"] == pytest.approx(0.15, abs=0.04)
    assert fractions["test"] == pytest.approx(0.2, abs=0.04)
    assert summary["counts"]["val"]["images"] == (manifest["split"] == "val").sum()
    assert summary["counts"]["test"]["patients"] == manifest.loc[manifest["split"] == "test", "patient_id"].nunique()


def test_stratification_spreads_rare_labels_better_than_random_patient_split(tmp_path: Path) -> None:
    stratified_dev, random_dev, stratified_missing, random_missing = [], [], 0, 0
    for seed in range(6):
        root = _write(tmp_path / f"ds{seed}", _leaky_frame(seed), LABELS, "multilabel")
        split_dataset(root, val=0.15, test=0.15, seed=seed)
        ours = Dataset.open(root).manifest
        baseline = _random_patient_split(ours, 0.15, 0.15, seed)
        for frame, missing_counter in ((ours, "ours"), (baseline, "baseline")):
            missing = sum(not ((frame["split"] == s) & (frame[label] == 1)).any() for label in LABELS for s in SPLITS)
            if missing_counter == "ours":
                stratified_missing += missing
            else:
                random_missing += missing
        # VeryRare is left out: with 3 positive patients, one per split is the best there is.
        stratified_dev.append(_label_deviation(ours, LABELS[:3]))
        random_dev.append(_label_deviation(baseline, LABELS[:3]))
    # Rare (6 patients) and very rare (3 patients) labels reach every split in every dataset.
    assert stratified_missing == 0
    assert random_missing > 0
    assert np.mean(stratified_dev) < 0.6 * np.mean(random_dev)


def test_multiclass_rare_class_in_every_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = []
    classes = ["a", "b", "rare"]
    for p in range(30):
        cls = "rare" if p < 3 else classes[int(rng.integers(2))]
        for s in range(int(rng.integers(1, 10))):
            rows.append({"patient_id": f"p{p}", "study_id": f"p{p}-{s}", **{c: float(c == cls) for c in classes}})
    root = _write(tmp_path / "mc", pd.DataFrame(rows), classes, "multiclass")
    summary = split_dataset(root, val=0.2, test=0.2, seed=1)
    assert all(summary["positives"]["rare"][s] > 0 for s in SPLITS)
    assert summary["warnings"] == []


def test_same_arguments_same_split_and_seed_changes_it(leaky: Path) -> None:
    first = split_dataset(leaky, seed=7)
    a = Dataset.open(leaky).manifest["split"].tolist()
    again = split_dataset(leaky, seed=7)
    assert Dataset.open(leaky).manifest["split"].tolist() == a
    assert again["version"] == first["version"]
    other = split_dataset(leaky, seed=8)
    assert Dataset.open(leaky).manifest["split"].tolist() != a
    assert other["version"] != first["version"]


def test_split_does_not_depend_on_manifest_row_order(tmp_path: Path) -> None:
    frame = _leaky_frame(2)
    root_a = _write(tmp_path / "a", frame, LABELS, "multilabel")
    root_b = _write(tmp_path / "b", frame.sample(frac=1.0, random_state=0), LABELS, "multilabel")
    split_dataset(root_a, seed=4)
    split_dataset(root_b, seed=4)
    a = Dataset.open(root_a).manifest.groupby("patient_id")["split"].first()
    b = Dataset.open(root_b).manifest.groupby("patient_id")["split"].first()
    pd.testing.assert_series_equal(a, b)


def test_official_test_split_is_kept_with_all_rows_of_its_patients(tmp_path: Path) -> None:
    frame = _leaky_frame(1)
    # The source marks one study of each of 4 patients as official test (like CheXpert's valid.csv).
    official_patients = sorted(frame["patient_id"].unique())[:4]
    first_rows = frame[frame["patient_id"].isin(official_patients)].groupby("patient_id").head(1).index
    frame["official_split"] = ""
    frame.loc[first_rows, "official_split"] = "test"
    root = _write(tmp_path / "ds", frame, LABELS, "multilabel")
    summary = split_dataset(root, val=0.1, test=0.2, seed=0)
    manifest = Dataset.open(root).manifest
    assert (manifest.loc[manifest["patient_id"].isin(official_patients), "split"] == "test").all()
    assert (_patient_splits(manifest) == 1).all()
    official_images = int(manifest["patient_id"].isin(official_patients).sum())
    assert summary["counts"]["test"]["official_images"] == official_images
    # Other patients top the test split up to the requested fraction of ALL images.
    assert _fractions(manifest)["test"] == pytest.approx(0.2, abs=0.04)
    assert manifest.loc[manifest["split"] == "test", "patient_id"].nunique() > 4


def test_official_test_larger_than_requested_gets_no_extra_patients(tmp_path: Path) -> None:
    frame = _leaky_frame(1)
    patients = sorted(frame["patient_id"].unique())
    frame["official_split"] = np.where(frame["patient_id"].isin(patients[:12]), "test", "")
    root = _write(tmp_path / "ds", frame, LABELS, "multilabel")
    summary = split_dataset(root, val=0.1, test=0.05, seed=0)
    manifest = Dataset.open(root).manifest
    assert set(manifest.loc[manifest["split"] == "test", "patient_id"]) == set(patients[:12])
    assert _fractions(manifest)["val"] == pytest.approx(0.1, abs=0.04)
    assert any("official test split" in w for w in summary["warnings"])


def test_regression_target_balanced_across_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(80):
        # Skewed ages: a plain random split easily puts most of the old tail into one split.
        age = float(rng.gamma(2.0, 30.0))
        for s in range(int(rng.integers(1, 6))):
            rows.append({"patient_id": f"p{p}", "study_id": f"p{p}-{s}", "boneage": age + rng.normal(0, 2)})
    root = _write(tmp_path / "reg", pd.DataFrame(rows), ["boneage"], "regression")
    summary = split_dataset(root, val=0.2, test=0.2, seed=0)
    manifest = Dataset.open(root).manifest
    assert (_patient_splits(manifest) == 1).all()
    overall, sd = float(manifest["boneage"].mean()), float(manifest["boneage"].std())
    for s in SPLITS:
        assert manifest.loc[manifest["split"] == s, "boneage"].mean() == pytest.approx(overall, abs=0.1 * sd)
        assert summary["target"][s]["n"] == (manifest["split"] == s).sum()
    assert "positives" not in summary


@pytest.mark.parametrize("kind", ["labels", "target"])
def test_held_out_splits_are_not_made_of_smaller_patients(kind: str) -> None:
    """Image and patient fractions agree: val/test must not collect the one-study patients."""
    rng = np.random.default_rng(0)
    n = 5000
    weights = rng.integers(1, 13, n).astype(float)
    need = np.array([0.8, 0.1, 0.1]) * weights.sum()
    if kind == "labels":
        positives = (rng.random((n, 4)) < [0.4, 0.1, 0.01, 0.002]) * weights[:, None]
        label_need = np.array([0.8, 0.1, 0.1])[:, None] * positives.sum(axis=0)
        no_fixed = np.zeros((3, 4), dtype=bool)
        assignment = iterative_stratification(positives, weights, need, label_need, no_fixed, rng)
    else:
        assignment = deal_by_target(rng.gamma(2.0, 30.0, n), weights, need, rng)
    for j, wanted in enumerate([0.8, 0.1, 0.1]):
        assert weights[assignment == j].sum() / weights.sum() == pytest.approx(wanted, abs=0.005)
        assert (assignment == j).mean() == pytest.approx(wanted, abs=0.01)


@pytest.mark.parametrize(
    ("val", "test", "flag"),
    [(-0.1, 0.1, "--val"), (0.1, -0.2, "--test"), (0.5, 0.5, "--val"), (0.1, float("nan"), "--test")],
)
def test_bad_fractions_are_config_errors_naming_the_flag(leaky: Path, val: float, test: float, flag: str) -> None:
    before = (leaky / "dataset.json").read_text()
    with pytest.raises(ConfigError, match=flag):
        split_dataset(leaky, val=val, test=test)
    assert (leaky / "dataset.json").read_text() == before


def test_empty_dataset_is_a_data_error(tmp_path: Path) -> None:
    empty = pd.DataFrame({"patient_id": [], "study_id": [], "Common": []})
    root = _write(tmp_path / "empty", empty, ["Common"], "multilabel")
    with pytest.raises(DataError, match="no images"):
        split_dataset(root)
    with pytest.raises(NotFoundError):
        split_dataset(tmp_path / "nowhere")


def test_label_missing_from_a_split_is_a_warning(tmp_path: Path) -> None:
    frame = _leaky_frame(0)
    frame["Lonely"] = (frame["patient_id"] == "pat000").astype(float)
    root = _write(tmp_path / "ds", frame, [*LABELS, "Lonely"], "multilabel")
    summary = split_dataset(root, seed=0)
    lonely = [w for w in summary["warnings"] if "'Lonely'" in w]
    assert len(lonely) == 1 and "1 positive patient" in lonely[0]
    assert sum(summary["positives"]["Lonely"][s] > 0 for s in SPLITS) == 1
    assert not any("'Rare'" in w for w in summary["warnings"])
    assert json.loads((root / "dataset.json").read_text())["split"]["warnings"] == summary["warnings"]


def test_dataset_json_counts_version_and_pixels_after_split(leaky: Path) -> None:
    before = Dataset.open(leaky)
    pixels_before = before.images(np.arange(len(before.manifest)))
    shard_bytes = {p.name: p.read_bytes() for p in (leaky / "shards").glob("*.npy")}
    split_dataset(leaky, val=0.1, test=0.1, seed=0)
    after = Dataset.open(leaky)
    counts = after.info["counts"]
    assert after.version != before.version
    assert sum(counts[s] for s in SPLITS) == counts["images"] == len(after.manifest)
    for s in SPLITS:
        assert counts[s] == len(after.indices(s))
        assert after.info["prevalence"][s]["Common"]["positive"] == int(
            (after.manifest.loc[after.manifest["split"] == s, "Common"] == 1).sum()
        )
    assert after.info["ingest"] == {"decoded_images": len(after.manifest)}
    assert after.info["split"]["seed"] == 0
    assert {p.name: p.read_bytes() for p in (leaky / "shards").glob("*.npy")} == shard_bytes
    np.testing.assert_array_equal(after.images(np.arange(len(after.manifest))), pixels_before)


def test_cli_table_json_and_errors(tmp_path: Path) -> None:
    frame = _leaky_frame(0)
    frame["Lonely"] = (frame["patient_id"] == "pat000").astype(float)
    root = _write(tmp_path / "ds", frame, [*LABELS, "Lonely"], "multilabel")
    runner = CliRunner()
    shown = runner.invoke(app, ["split", str(root), "--val", "0.2", "--seed", "2"])
    assert shown.exit_code == 0, shown.output
    assert "VeryRare" in shown.output and "warning:" in shown.output and "Lonely" in shown.output
    as_json = runner.invoke(app, ["split", str(root), "--val", "0.2", "--seed", "2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["requested"] == {"val": 0.2, "test": 0.1, "seed": 2}
    assert sum(summary["counts"][s]["images"] for s in SPLITS) == len(frame)
    bad = runner.invoke(app, ["split", str(root), "--val", "0.6", "--test", "0.5"])
    assert bad.exit_code == 2 and "--test" in bad.output
