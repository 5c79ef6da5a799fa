"""Checkpoints and exported models for export and runtime tests, made in milliseconds (no training)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from radflow.data.dataset import Dataset
from radflow.train.checkpoint import ModelMeta, save_checkpoint
from radflow.train.models import RadNet, create_model
from tests.fixtures import make_dataset

__all__ = ["PoolNet", "make_checkpoint", "png_bytes"]


def make_checkpoint(
    root: Path,
    task: str = "multilabel",
    size: int = 32,
    n: int = 60,
    thresholds: dict[str, float] | None = None,
    seed: int = 0,
) -> tuple[Path, Path]:
    """(checkpoint, dataset) of a random-init network whose meta points at a fixture dataset.

    small_cnn for the pooled tasks; for segmentation a two-level small_unet (4 and 8 channels).
    """
    dataset = make_dataset(root / f"ds-{task}-{size}", task=task, n=n, size=size, seed=seed)
    ds = Dataset.open(dataset)
    torch.manual_seed(seed)
    regression = task == "regression"
    arch, model_kwargs = ("small_unet", {"widths": [4, 8]}) if task == "segmentation" else ("small_cnn", {})
    model = create_model(arch, len(ds.labels), num_extra=1 if regression else 0, **model_kwargs)
    meta = ModelMeta(
        arch=arch,
        task=task,
        labels=ds.labels,
        num_outputs=len(ds.labels),
        extra_inputs=["sex"] if regression else [],
        preprocess=ds.spec.to_dict(),
        dataset_version=ds.version,
        dataset_path=str(dataset),
        target_unit="months" if regression else None,
        target_mean=110.0 if regression else None,
        target_std=55.0 if regression else None,
        thresholds=thresholds,
        run_id=None,
        model_kwargs=model_kwargs,
    )
    return save_checkpoint(root / f"{task}-{size}.pt", model, meta), dataset


class PoolNet(RadNet):
    """A network whose feature map is the image itself, average-pooled 8x: its CAM is known exactly."""

    def __init__(self, num_outputs: int = 2):
        super().__init__(num_features=1, num_outputs=num_outputs)
        self.down = nn.AvgPool2d(8)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]])[:num_outputs])
            self.fc.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A grey PNG of ``pixels`` (uint8 or uint16)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
