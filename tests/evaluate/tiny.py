"""Tiny untrained checkpoints on tiny datasets: an evaluation report needs a model, not a good one."""

from __future__ import annotations

from pathlib import Path

from radflow.data.dataset import Dataset
from radflow.train.checkpoint import ModelMeta, save_checkpoint
from radflow.train.models import create_model
from tests.fixtures import make_dataset

__all__ = ["tiny_model"]


def tiny_model(root: Path, task: str, n: int = 90, labels: tuple[str, ...] | None = None) -> tuple[Path, Path]:
    """(dataset, checkpoint) of an untrained ``small_cnn`` (``small_unet`` for segmentation) on 32 px images."""
    dense = task == "segmentation"
    ds_path = make_dataset(root / task, task=task, n=n, size=32, labels=labels, patients=n if dense else None)
    ds = Dataset.open(ds_path)
    extra = ["sex"] if task == "regression" else []
    arch = "small_unet" if dense else "small_cnn"
    meta = ModelMeta(
        arch=arch,
        task=task,
        labels=ds.labels,
        num_outputs=len(ds.labels),
        extra_inputs=extra,
        preprocess=ds.spec.to_dict(),
        dataset_version=ds.version,
        dataset_path=str(ds_path),
        target_unit="months" if task == "regression" else None,
        target_mean=110.0 if task == "regression" else None,
        target_std=60.0 if task == "regression" else None,
    )
    model = create_model(arch, len(ds.labels), num_extra=len(extra)) if extra else create_model(arch, len(ds.labels))
    return ds_path, save_checkpoint(root / f"{task}.pt", model, meta)
