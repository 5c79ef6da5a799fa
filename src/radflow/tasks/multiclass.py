"""Multi-class classification: exactly one class per image (a folder per class)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from radflow.errors import DataError
from radflow.tasks.base import Finding, LabelSchema, LossFn, Prediction
from radflow.tasks.classification import ClassificationKind
from radflow.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

__all__ = ["Multiclass"]


@register_task
class Multiclass(ClassificationKind):
    """Softmax probabilities over the classes; the arg-max class is the one positive finding."""

    name: ClassVar[str] = "multiclass"
    label_schema: ClassVar[LabelSchema] = LabelSchema(
        dtype="float32",
        values="one-hot over the classes; a row with NaN has no known class",
        nan_policy="drop_row",
        min_labels=2,
    )
    losses: ClassVar[tuple[str, ...]] = ("ce", "bce")
    monitor: ClassVar[tuple[str, Literal["min", "max"]]] = ("val_accuracy", "max")
    gate_metrics: ClassVar[tuple[str, ...]] = ("test_macro_auroc", "test_accuracy", "test_auroc_<label>")
    activation: ClassVar[Literal["sigmoid", "softmax", "denormalise"]] = "softmax"

    def check_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        if len(labels) < self.label_schema.min_labels:
            raise DataError("a multiclass dataset needs at least two classes.")
        return super().check_labels(labels, train_targets)

    def make_loss(self, name: str, pos_weight: torch.Tensor | None = None) -> LossFn:
        from radflow.tasks.losses import masked_bce, masked_ce

        if name == "bce":
            return lambda out, y: masked_bce(out, y, pos_weight)
        return masked_ce

    def activate(self, outputs: torch.Tensor, target_mean: float | None, target_std: float | None) -> torch.Tensor:
        import torch

        return torch.softmax(outputs, dim=1)

    def val_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Accuracy of the arg-max class over rows with a known class, and the per-class AUROCs."""
        known = ~np.isnan(targets).any(axis=1)
        truth = targets[known].argmax(1)
        accuracy = float((preds[known].argmax(1) == truth).mean()) if known.any() else math.nan
        return {"val_accuracy": accuracy, **super().val_metrics(labels, preds, targets)}

    def encode(
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float], unit: str | None
    ) -> Prediction:
        top = int(np.argmax(scores))
        findings = [
            Finding(label, round(float(scores[i]), 6), i == top, thresholds[label]) for i, label in enumerate(labels)
        ]
        return Prediction(findings=findings)
