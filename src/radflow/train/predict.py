"""Batch prediction of a trained model over a dataset split (evaluation and validation use it).

Outputs are in user terms, as the task kind activates them: probabilities (sigmoid for multi-label,
softmax for multi-class), the regression target in its own unit (months), undoing the training
normalisation, or for segmentation a probability map per structure, ``(n, K, S, S)`` at model size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from radflow.data.dataset import Dataset
from radflow.data.preprocess import PreprocessSpec
from radflow.tasks import get_task
from radflow.train.checkpoint import ModelMeta
from radflow.train.data import ShardBatches, make_loader, sex_feature
from radflow.train.models import model_network

__all__ = ["extra_inputs", "outputs_to_predictions", "predict_dataset", "predict_loader"]


def extra_inputs(ds: Dataset, rows: np.ndarray, meta: ModelMeta) -> np.ndarray | None:
    """The model's extra inputs (sex for bone age) for manifest ``rows``, or None when it takes none."""
    if not meta.extra_inputs:
        return None
    columns = []
    for name in meta.extra_inputs:
        if name != "sex":
            raise ValueError(f"unsupported extra input {name!r}")
        columns.append(sex_feature(ds.manifest["sex"].to_numpy()[rows]))
    return np.concatenate(columns, axis=1)


def outputs_to_predictions(outputs: torch.Tensor, meta: ModelMeta) -> torch.Tensor:
    """Raw model outputs to probabilities or target units."""
    return get_task(meta.task).activate(outputs.float(), meta.target_mean, meta.target_std)


@torch.no_grad()
def predict_loader(
    model: nn.Module, meta: ModelMeta, loader: torch.utils.data.DataLoader, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(raw outputs, predictions) for every batch of ``loader``, in loader order."""
    was_training = model.training
    model.eval()
    raw, preds = [], []
    for x, _, extra in loader:
        out = model(x.to(device), extra.to(device) if extra.shape[1] else None).float()
        raw.append(out.cpu())
        preds.append(outputs_to_predictions(out, meta).cpu())
    model.train(was_training)
    if not raw:
        size = int((meta.preprocess or {}).get("size", 0))
        shape = (0, meta.num_outputs, size, size) if model_network(meta.arch) == "dense" else (0, meta.num_outputs)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    return torch.cat(raw).numpy(), torch.cat(preds).numpy()


def predict_dataset(
    model: nn.Module, meta: ModelMeta, ds: Dataset, split: str, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    """Predictions (n_rows_of_split, num_outputs) in ``ds.indices(split)`` order."""
    rows = ds.indices(split)
    spec = PreprocessSpec.from_dict(meta.preprocess) if meta.preprocess else ds.spec
    data = ShardBatches(ds, rows, spec, extra=extra_inputs(ds, rows, meta))
    model.to(device)
    _, preds = predict_loader(model, meta, make_loader(data, batch_size, shuffle=False), device)
    return preds
