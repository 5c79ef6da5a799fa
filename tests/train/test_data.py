"""Batches come from the memory-mapped shards, identically with or without worker processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from radflow.config import AugmentConfig
from radflow.data.dataset import Dataset
from radflow.data.preprocess import to_model_input
from radflow.train.data import ShardBatches, augment, make_loader, sex_feature
from tests.fixtures import make_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return Dataset.open(make_dataset(tmp_path_factory.mktemp("ds"), n=60, size=32))


def test_batches_match_dataset_pixels_and_targets(ds: Dataset) -> None:
    rows = ds.indices("train")
    data = ShardBatches(ds, rows, ds.spec, ds.targets(rows))
    x, y, extra = data[[3, 0, 7]]
    expected = to_model_input(ds.images(rows[[3, 0, 7]]), ds.spec)
    assert np.array_equal(x.numpy(), expected)
    assert np.array_equal(y.numpy(), ds.targets(rows[[3, 0, 7]]), equal_nan=True)
    assert extra.shape == (3, 0)


def test_pickled_dataset_carries_no_pixels(ds: Dataset) -> None:
    data = ShardBatches(ds, ds.indices("train"), ds.spec)
    data[[0, 1]]  # opens the memory maps in this process
    assert data._shards
    blob = pickle.dumps(data)
    assert len(blob) < 5_000  # rows + locations only; one 32 px image alone is 1 kB
    assert np.array_equal(pickle.loads(blob)[[0, 1]][0], data[[0, 1]][0])


def test_worker_loader_yields_the_same_batches(ds: Dataset) -> None:
    data = ShardBatches(ds, ds.indices("train"), ds.spec)
    batches = [
        [x for x, _, _ in make_loader(data, 8, shuffle=True, num_workers=w, generator=torch.Generator().manual_seed(3))]
        for w in (0, 1)
    ]
    assert len(batches[0]) == len(batches[1]) == -(-len(data) // 8)
    assert all(torch.equal(a, b) for a, b in zip(*batches, strict=True))


def test_augment_is_seeded_and_keeps_laterality_by_default() -> None:
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:24, 2:10] = 1.0  # a bright block on the left
    cfg = AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(0))
    b = augment(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, x)
    assert (a[..., :16].mean(dim=(1, 2, 3)) > a[..., 16:].mean(dim=(1, 2, 3))).all()
    flip_only = AugmentConfig(hflip=True, rotation_deg=0, scale=0, brightness=0, contrast=0)
    flipped = augment(x, flip_only, torch.Generator().manual_seed(1))
    assert (flipped[..., 16:].mean(dim=(1, 2, 3)) > flipped[..., :16].mean(dim=(1, 2, 3))).any()
    assert torch.equal(augment(x, AugmentConfig(enabled=False), torch.Generator()), x)


def test_sex_feature() -> None:
    assert sex_feature(["M", "F", ""]).ravel().tolist() == [1.0, 0.0, 0.5]
