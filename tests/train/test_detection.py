"""Detection training: the FCOS detector from the registry, box batches, runs of the loop and its checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from radflow.config import AugmentConfig, Params
from radflow.data.dataset import Dataset
from radflow.errors import ConfigError
from radflow.tasks import get_task
from radflow.train.checkpoint import load_model
from radflow.train.data import ShardBatches, augment, box_targets
from radflow.train.loop import train
from radflow.train.models import create_model, list_models, model_network
from radflow.train.predict import predict_dataset

from .detection_fixtures import make_detection_dataset


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_detection_dataset(tmp_path_factory.mktemp("det"))


def test_batches_hold_each_images_boxes_padded_with_nan_rows(det: Path) -> None:
    ds = Dataset.open(det)
    rows = ds.indices("train")
    data = ShardBatches(ds, rows, ds.spec, ds.targets(rows), boxes=box_targets(ds, rows))
    x, y, _ = data[list(range(len(rows)))]
    frames = ds.boxes(rows)
    most = max(len(frame) for frame in frames)  # which patients land in train depends on the site's salt
    assert most >= 1 and x.shape == (len(rows), 1, 32, 32) and y.shape == (len(rows), most, 5)
    for i, frame in enumerate(frames):
        kept = y[i][~torch.isnan(y[i, :, 0])].numpy()
        assert np.allclose(kept[:, :4], frame[["x0", "y0", "x1", "y1"]].to_numpy(), atol=1e-4)
        assert (kept[:, 4] == 0).all()  # the one label's index
        assert ds.targets(rows[i : i + 1])[0, 0] == float(len(frame) > 0)


def test_the_detector_is_registered_and_returns_its_own_loss_terms_or_anchor_outputs() -> None:
    assert list_models("detection") == ["fcos_small"] and model_network("fcos_small") == "detection"
    model = create_model("fcos_small", 2)
    x = torch.randn(2, 1, 32, 32)
    targets = torch.full((2, 1, 5), float("nan"))
    targets[0, 0] = torch.tensor([4.0, 6.0, 20.0, 18.0, 1.0])
    terms = model(x, targets=targets)  # the second image has no box: a negative
    assert terms.shape == (3,) and torch.isfinite(terms).all()
    terms.sum().backward()
    model.eval()
    out = model(x)
    anchors = 8 * 8 + 4 * 4 + 2 * 2  # strides 4, 8, 16 at 32 px
    assert out.shape == (2, anchors, 4 + 2 + 1)
    boxes = out[..., :4]
    assert (boxes >= 0).all() and (boxes <= 32).all() and (boxes[..., 2:] >= boxes[..., :2]).all()
    with pytest.raises(ConfigError, match="no extra inputs"):
        create_model("fcos_small", 2, num_extra=1)
    with pytest.raises(ConfigError, match="channels divisible by 32"):
        create_model("fcos_small", 2, channels=16)


def test_boxes_go_through_the_train_augmentation_into_the_detector_loss(det: Path) -> None:
    ds = Dataset.open(det)
    rows = ds.indices("train")
    x, y, _ = ShardBatches(ds, rows, ds.spec, ds.targets(rows), boxes=box_targets(ds, rows))[list(range(len(rows)))]
    cfg = AugmentConfig(rotation_deg=20, scale=0.2, hflip=True)
    ax, ay = augment(x, cfg, torch.Generator().manual_seed(0), boxes=y)
    assert ax.shape == x.shape and ay.shape == y.shape and not torch.equal(ax, x)
    kept = ~torch.isnan(ay[..., 0])
    assert kept.any() and not torch.equal(ay[kept], y[kept])  # the boxes moved with their images
    assert (ay[kept][:, :4] >= 0).all() and (ay[kept][:, :4] <= 32).all()
    assert torch.equal(ay[kept][:, 4], y[kept][:, 4])  # labels unchanged
    terms = create_model("fcos_small", 1)(ax, targets=ay)
    assert torch.isfinite(terms).all()


def test_detection_trains_with_the_default_arch_and_its_checkpoint_predicts(det: Path, tmp_path: Path) -> None:
    params = Params().with_overrides(
        {
            "train.epochs": 2,
            "train.max_steps": 1,
            "train.batch_size": 4,
            "train.num_workers": 0,
            "train.early_stopping_patience": 0,
            "train.threads": 1,
            "train.lr": 3e-3,
        }
    )
    result = train(
        det,
        params,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        out_dir=tmp_path / "ckpt",
        progress=False,
    )
    assert result.monitor == "val_map50" and result.epochs_run == 2
    assert any("training fcos_small" in w for w in result.warnings)
    assert params.train.augment.enabled and not any("augmentation" in w for w in result.warnings)
    for epoch in result.history:
        assert np.isfinite(epoch["train_loss"]) and np.isfinite(epoch["val_loss"])
        assert 0.0 <= epoch["val_map50"] <= 1.0
    model, meta = load_model(result.checkpoint_path)
    assert meta.arch == "fcos_small" and meta.task == "detection"
    ds = Dataset.open(det)
    preds = predict_dataset(model, meta, ds, "val")
    assert preds.shape == (len(ds.indices("val")), 84, 4 + 1)
    scores = preds[..., 4:]
    assert ((scores >= 0) & (scores <= 1)).all()
    kept, _ = get_task("detection").val_batch(preds, np.zeros((len(preds), 1, 5), np.float32))
    assert kept.shape[1:] == (100, 6)
