"""Training: model registry, losses, data loading, the loop, checkpoints and batch prediction."""

from __future__ import annotations

from radflow.train.checkpoint import ModelMeta, load_model, save_checkpoint, update_checkpoint_meta
from radflow.train.loop import TrainResult, train
from radflow.train.models import create_model, list_models, register_model
from radflow.train.predict import predict_dataset

__all__ = [
    "ModelMeta",
    "TrainResult",
    "create_model",
    "list_models",
    "load_model",
    "predict_dataset",
    "register_model",
    "save_checkpoint",
    "train",
    "update_checkpoint_meta",
]
