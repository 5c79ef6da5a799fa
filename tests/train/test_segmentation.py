"""Segmentation training: dense networks, mask batches, joint augmentation, runs of the loop with resume and
the test evaluation a run ends with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radflow.config import AugmentConfig, EvaluateConfig, Params
from radflow.data.dataset import Dataset
from radflow.data.masks import unpack
from radflow.errors import ConfigError, DataError
from radflow.evaluate.report import evaluate_training
from radflow.train.checkpoint import load_checkpoint, load_model
from radflow.train.data import ShardBatches, augment
from radflow.train.loop import train
from radflow.train.losses import make_loss
from radflow.train.models import create_model, list_models, load_weights
from radflow.train.predict import predict_dataset
from tests.fixtures import SEGMENTATION_STRUCTURES, make_dataset

SMALLEST: dict[str, dict[str, Any]] = {
    "monai_unet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
    "monai_segresnet": {"init_filters": 8, "blocks_down": (1, 1), "blocks_up": (1,)},
}
"""The fewest channels each MONAI network builds with, so a few CPU steps at 32 px take well under a second."""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("seg"), task="segmentation", n=16, size=32, patients=8)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def _params(**overrides: object) -> Params:
    base = {
        "train.epochs": 2,
        "train.batch_size": 4,
        "train.num_workers": 0,
        "train.early_stopping_patience": 0,
        "train.threads": 1,
        "train.lr": 3e-3,
    }
    return Params().with_overrides({**base, **overrides})


def test_batches_hold_the_unpacked_masks_and_nan_maps_for_unannotated_structures(seg: Path) -> None:
    ds = Dataset.open(seg)
    rows = ds.indices("train")
    targets = ds.targets(rows)
    targets[1, 2] = np.nan  # structure 2 not annotated on the second image
    x, y, _ = ShardBatches(ds, rows, ds.spec, targets, masks=True)[[1, 0]]
    assert x.shape == (2, 1, 32, 32) and y.shape == (2, len(SEGMENTATION_STRUCTURES), 32, 32)
    expected = unpack(ds.masks(rows[[1, 0]]), 3).astype(np.float32)
    assert np.array_equal(y[1].numpy(), expected[1]) and np.array_equal(y[0, :2].numpy(), expected[0, :2])
    assert torch.isnan(y[0, 2]).all()
    with pytest.raises(DataError, match="has no masks"):
        ShardBatches(Dataset.open(make_dataset(seg.parent / "ml", n=8)), np.arange(4), ds.spec, masks=True)


@pytest.mark.parametrize("name", list_models("dense"))
def test_dense_network_trains_a_few_steps_on_masks(name: str, seg: Path) -> None:
    ds = Dataset.open(seg)
    rows = ds.indices("train")[:8]
    x, y, _ = ShardBatches(ds, rows, ds.spec, ds.targets(rows), masks=True)[list(range(8))]
    torch.manual_seed(0)
    model = create_model(name, num_outputs=y.shape[1], **SMALLEST.get(name, {}))
    assert model(x).shape == y.shape  # logits per structure at the input's size
    with pytest.raises(ValueError, match="no extra inputs"):
        model(x, torch.ones(8, 1))
    loss_fn = make_loss(None, "segmentation")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_a_monai_state_dict_loads_into_the_registered_network(tmp_path: Path) -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(2)
    reference = UNet(spatial_dims=2, in_channels=1, out_channels=2, **SMALLEST["monai_unet"])
    torch.save(reference.state_dict(), tmp_path / "unet.pt")
    model = create_model("monai_unet", 2, **SMALLEST["monai_unet"]).eval()
    report = load_weights(model, tmp_path / "unet.pt")
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(model(x), reference.eval()(x))


def test_dense_networks_take_no_extra_inputs() -> None:
    with pytest.raises(ConfigError, match="takes no extra inputs"):
        create_model("small_unet", 2, num_extra=1)


def test_joint_augmentation_keeps_image_and_mask_aligned() -> None:
    masks = torch.zeros(6, 2, 32, 32)
    masks[:, 0, 4:14, 3:12] = 1  # off-centre, so any rotation, zoom or flip moves it
    masks[:, 1, 10:26, 8:20] = 1  # overlapping the first
    masks[5, 1] = float("nan")  # not annotated on the last image
    x = masks[:, :1].clone()  # the image is structure 0 drawn in white
    geometric = AugmentConfig(rotation_deg=30, scale=0.2, hflip=True, brightness=0, contrast=0)
    x_aug, m_aug = augment(x, geometric, torch.Generator().manual_seed(0), masks=masks)
    assert not torch.equal(m_aug[:, 0], masks[:, 0])
    assert set(m_aug[:, 0].unique().tolist()) <= {0.0, 1.0}  # nearest-neighbour: no blended labels
    agree = ((x_aug[:, 0] > 0.5) == (m_aug[:, 0] > 0.5)).float().mean(dim=(1, 2))
    assert (agree > 0.97).all()  # only edge pixels, bilinear in the image, may differ
    assert torch.isnan(m_aug[5, 1]).all() and not torch.isnan(m_aug[:5]).any()
    # The same draws as without masks: a classifier run augments its images exactly as before.
    assert torch.equal(x_aug, augment(x, geometric, torch.Generator().manual_seed(0)))
    intensity = AugmentConfig(rotation_deg=0, scale=0, brightness=0.5, contrast=0.5)
    x_int, m_int = augment(x, intensity, torch.Generator().manual_seed(1), masks=masks)
    assert not torch.equal(x_int, x) and torch.equal(m_int.nan_to_num(-1), masks.nan_to_num(-1))


def test_segmentation_trains_with_the_default_arch_resumes_and_evaluates(seg: Path, store: str, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = train(seg, _params(), store, out_dir=ck, progress=False)
    assert any("training small_unet" in w for w in first.warnings)
    assert first.monitor == "val_mean_dice" and first.epochs_run == 2
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in first.history)
    assert 0 <= first.history[-1]["val_mean_dice"] <= 1
    assert {f"val_dice_{s.replace(' ', '_')}" for s in SEGMENTATION_STRUCTURES} <= set(first.history[-1])
    resumed = train(seg, _params(**{"train.epochs": 3}), store, out_dir=ck, resume=True, progress=False)
    assert resumed.run_id == first.run_id
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    assert resumed.history[-1]["train_loss"] < first.history[0]["train_loss"]
    assert load_checkpoint(ck / "last.pt")["epoch"] == 3
    model, meta = load_model(resumed.checkpoint_path)
    assert meta.arch == "small_unet" and meta.task == "segmentation" and meta.labels == list(SEGMENTATION_STRUCTURES)
    ds = Dataset.open(seg)
    maps = predict_dataset(model, meta, ds, "val")
    assert maps.shape == (len(ds.indices("val")), 3, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    from mlflow.tracking import MlflowClient

    run = MlflowClient(store).get_run(first.run_id)
    assert run.data.params["train.arch"] == "small_unet" and run.data.tags["radflow.arch"] == "small_unet"
    # Training's final evaluation: the test split's Dice logged to the run, with the gallery and per-image Dice.
    evaluation = evaluate_training(resumed, seg, EvaluateConfig(n_bootstrap=20))
    logged = MlflowClient(store).get_run(first.run_id).data.metrics
    assert logged["test_mean_dice"] == pytest.approx(evaluation["headline"]["test_mean_dice"])
    assert {f"test_dice_{s.replace(' ', '_')}" for s in SEGMENTATION_STRUCTURES} <= set(logged)
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(first.run_id, "evaluation")}
    assert {f"evaluation/{name}" for name in ("evaluation.json", "predictions.parquet", "worst_cases.png")} <= artifacts


def test_a_classifier_arch_chosen_for_segmentation_is_refused(seg: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'resnet18' is a pooled network.*--arch monai_segresnet or monai_unet"):
        train(seg, _params(**{"train.arch": "resnet18"}), f"sqlite:///{tmp_path / 'm.db'}", out_dir=tmp_path)
    multilabel = make_dataset(tmp_path / "ml", n=24)
    with pytest.raises(ConfigError, match="'small_unet' is a dense network"):
        train(multilabel, _params(**{"train.arch": "small_unet"}), f"sqlite:///{tmp_path / 'm.db'}", out_dir=tmp_path)
