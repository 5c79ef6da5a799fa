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


def test_augmented_boxes_move_with_their_image() -> None:
    n, s = 6, 32
    boxes = torch.full((n, 2, 5), float("nan"))
    boxes[:, 0] = torch.tensor([4.0, 6.0, 14.0, 20.0, 0.0])  # off-centre: any zoom, rotation or flip moves it
    boxes[:3, 1] = torch.tensor([0.0, 0.0, 3.0, 3.0, 1.0])  # in a corner: a zoom in pushes it out
    x = torch.zeros(n, 1, s, s)
    x[:, 0, 6:20, 4:14] = 1.0  # the first box drawn in white
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731

    zoom_flip = AugmentConfig(rotation_deg=0, scale=0.3, hflip=True, brightness=0, contrast=0)
    x_aug, moved = augment(x, zoom_flip, generator(), boxes=boxes)
    assert torch.equal(x_aug, augment(x, zoom_flip, generator()))  # the same draws as without boxes
    for i in range(n):  # without rotation the moved box is the white region's own box, to a pixel
        ys, xs = torch.nonzero(x_aug[i, 0] > 0.5, as_tuple=True)
        drawn = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(moved[i, 0, :4], drawn, atol=1.0), (i, moved[i, 0], drawn)
        assert moved[i, 0, 4] == 0
    assert not torch.equal(moved[:, 0], boxes[:, 0]) and torch.isnan(moved[3:, 1]).all()  # padding stays padding

    rotate = AugmentConfig(rotation_deg=30, scale=0, hflip=False, brightness=0, contrast=0)
    x_rot, turned = augment(x, rotate, generator(), boxes=boxes)
    for i in range(n):  # rotated: the box is the rotated corners' bounding box, so it holds the whole region
        ys, xs = torch.nonzero(x_rot[i, 0] > 0.5, as_tuple=True)
        x0, y0, x1, y1 = turned[i, 0, :4].tolist()
        assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1

    zoom_in = AugmentConfig(rotation_deg=0, scale=0.45, hflip=False, brightness=0, contrast=0)
    corner = torch.full((200, 1, 5), float("nan"))
    corner[:, 0] = torch.tensor([0.0, 0.0, 2.0, 2.0, 1.0])
    _, pushed = augment(torch.zeros(200, 1, s, s), zoom_in, generator(), boxes=corner)
    assert torch.isnan(pushed[:, 0, 0]).any()  # some zooms push the corner box out of the image: dropped
    assert (~torch.isnan(pushed[:, 0, 0])).any()
    off = AugmentConfig(enabled=False)
    assert torch.equal(augment(x, off, generator(), boxes=boxes)[1].nan_to_num(-1), boxes.nan_to_num(-1))
