"""The simulator's clinic pool: new phantom patients, disjoint from the dataset's patients and held-out images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radflow.data.dataset import Dataset
from radflow.data.neardup import NearDuplicateIndex
from radflow.errors import ConfigError
from radflow.sim.clinic import build_clinic_pool, clinic_kind
from radflow.sim.simulator import SimulationConfig, Simulator
from tests.fixtures import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return Dataset.open(make_dataset(tmp_path_factory.mktemp("clinic") / "ds", n=60, seed=3))


def test_the_pool_holds_new_patients_with_the_datasets_labels_and_size(dataset: Dataset) -> None:
    pool = build_clinic_pool(dataset, n=30, seed=1)
    ds = pool.dataset
    assert pool.kind == "chest" and len(ds.manifest) + pool.dropped == 30
    assert ds.labels == dataset.labels and ds.spec.size == dataset.spec.size and ds.task == dataset.task
    ids = set(dataset.manifest["patient_id"]) | set(dataset.manifest["study_id"])
    assert not ids & (set(ds.manifest["patient_id"]) | set(ds.manifest["study_id"]))
    held_out = np.flatnonzero(dataset.manifest["split"].isin(["val", "test"]).to_numpy())
    index = NearDuplicateIndex(dataset.images(held_out))
    assert all(index.find(ds.image(i)) is None for i in range(len(ds.manifest)))
    again = build_clinic_pool(dataset, n=30, seed=1).dataset  # the same seed, the same pool
    assert np.array_equal(again.images(again.indices("all")), ds.images(ds.indices("all")))
    other = build_clinic_pool(dataset, n=30, seed=2).dataset
    assert not np.array_equal(other.image(0), ds.image(0))


def test_datasets_without_phantoms_have_no_clinic(tmp_path: Path) -> None:
    multiclass = Dataset.open(make_dataset(tmp_path / "mc", task="multiclass", n=12, labels=("a", "b")))
    with pytest.raises(ConfigError, match=r"no clinic of new patients.*--split"):
        clinic_kind(multiclass)
    regression = Dataset.open(make_dataset(tmp_path / "rg", task="regression", n=12))
    assert clinic_kind(regression) == "hand"


def test_the_simulator_sends_the_clinic_by_default_and_warns_on_held_out_splits(dataset: Dataset) -> None:
    url = "http://127.0.0.1:9"
    default = Simulator(SimulationConfig(url=url, dataset=dataset.root, clinic_images=20))
    assert default.summary.clinic is None  # made when sending starts (off the caller's thread), not here
    held_ids = set(dataset.manifest.loc[dataset.manifest["split"] != "train", "study_id"])
    assert {default.prepare().case.study for _ in range(20)}.isdisjoint(held_ids)
    summary = default.summary.to_dict()
    assert summary["source"] == "clinic" and summary["clinic"]["kind"] == "chest" and summary["warnings"] == []
    assert not default.config.held_out
    for split in ("test", "val"):
        explicit = Simulator(SimulationConfig(url=url, dataset=dataset.root, split=split))
        (warning,) = explicit.summary.to_dict()["warnings"]
        assert f"the '{split}' split is held-out" in warning and "feedback export` refuses" in warning
        assert explicit.summary.to_dict()["source"] == f"split:{split}" and explicit.config.held_out
    train = Simulator(SimulationConfig(url=url, dataset=dataset.root, split="train"))
    assert train.summary.to_dict()["warnings"] == []
    with pytest.raises(ConfigError, match="--clinic-images"):
        SimulationConfig(url=url, dataset=dataset.root, clinic_images=0)
