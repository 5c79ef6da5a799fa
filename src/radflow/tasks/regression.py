"""Regression: one value per image in a unit (bone age in months, from the image and the sex)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.tasks.base import InvalidFeedbackError, LabelSchema, LossFn, Prediction, TaskKind
from radflow.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

__all__ = ["Regression"]


@register_task
class Regression(TaskKind):
    """One value; trained on standardised targets, answered in the target unit."""

    name: ClassVar[str] = "regression"
    family: ClassVar[Literal["classification", "regression"]] = "regression"
    label_schema: ClassVar[LabelSchema] = LabelSchema(
        dtype="float32", values="one number in the target unit; NaN = unknown", nan_policy="unknown"
    )
    losses: ClassVar[tuple[str, ...]] = ("l1",)
    monitor: ClassVar[tuple[str, Literal["min", "max"]]] = ("val_mae", "min")
    gate_metrics: ClassVar[tuple[str, ...]] = ("test_mae",)
    online_metric: ClassVar[str] = "mae"
    output: ClassVar[str] = "value"
    activation: ClassVar[Literal["sigmoid", "softmax", "denormalise"]] = "denormalise"
    renderer: ClassVar[Literal["findings", "value"]] = "value"
    response_key: ClassVar[Literal["findings", "prediction"]] = "prediction"
    extra_inputs: ClassVar[tuple[str, ...]] = ("sex",)
    target_unit: ClassVar[str | None] = "months"
    normalise_targets: ClassVar[bool] = True

    def num_outputs(self, labels: Sequence[str]) -> int:
        return 1

    def make_loss(self, name: str, pos_weight: torch.Tensor | None = None) -> LossFn:
        from radflow.tasks.losses import masked_l1

        return masked_l1

    def activate(self, outputs: torch.Tensor, target_mean: float | None, target_std: float | None) -> torch.Tensor:
        return outputs * float(target_std or 1.0) + float(target_mean or 0.0)

    def val_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        known = ~np.isnan(targets[:, 0])
        mae = float(np.abs(preds[known, 0] - targets[known, 0]).mean()) if known.any() else math.nan
        return {"val_mae": mae}

    def encode(
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float], unit: str | None
    ) -> Prediction:
        return Prediction(value=round(float(scores[0]), 4), unit=unit)

    def validate_feedback(
        self, outputs: Mapping[str, Any], labels: Mapping[str, int] | None, value: float | None
    ) -> None:
        if labels is not None:
            raise InvalidFeedbackError("this prediction is a regression value; send 'value', not 'labels'.")
        if value is not None and not math.isfinite(value):
            raise InvalidFeedbackError(f"'value' must be a finite number, got {value}.")

    def drift_features(self, labels: Sequence[str]) -> list[str]:
        return ["value"]
