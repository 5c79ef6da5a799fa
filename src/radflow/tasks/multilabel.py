"""Multi-label classification: any number of findings per image (chest X-ray: NIH, CheXpert)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from radflow.tasks.base import Finding, LabelSchema, LossFn, Prediction
from radflow.tasks.classification import ClassificationKind
from radflow.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

__all__ = ["Multilabel"]


@register_task
class Multilabel(ClassificationKind):
    """One sigmoid probability per finding; a finding is positive at or above its threshold."""

    name: ClassVar[str] = "multilabel"
    label_schema: ClassVar[LabelSchema] = LabelSchema(
        dtype="float32", values="0 or 1 per finding; NaN = unknown (not stated or uncertain)", nan_policy="unknown"
    )
    losses: ClassVar[tuple[str, ...]] = ("bce",)
    monitor: ClassVar[tuple[str, Literal["min", "max"]]] = ("val_macro_auroc", "max")
    gate_metrics: ClassVar[tuple[str, ...]] = ("test_macro_auroc", "test_auroc_<label>", "test_ece")
    activation: ClassVar[Literal["sigmoid", "softmax", "denormalise"]] = "sigmoid"

    def pos_weight(self, train_targets: np.ndarray) -> np.ndarray | None:
        """Negatives over positives among the known targets of each finding, at least 1 (rare findings weigh more)."""
        positives = np.nansum(train_targets == 1, axis=0)
        known = (~np.isnan(train_targets)).sum(axis=0)
        return np.maximum((known - positives) / np.maximum(positives, 1), 1.0).astype(np.float32)

    def make_loss(self, name: str, pos_weight: torch.Tensor | None = None) -> LossFn:
        from radflow.tasks.losses import masked_bce

        return lambda out, y: masked_bce(out, y, pos_weight)

    def activate(self, outputs: torch.Tensor, target_mean: float | None, target_std: float | None) -> torch.Tensor:
        import torch

        return torch.sigmoid(outputs)

    def encode(
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float], unit: str | None
    ) -> Prediction:
        findings = [
            Finding(label, round(float(scores[i]), 6), bool(scores[i] >= thresholds[label]), thresholds[label])
            for i, label in enumerate(labels)
        ]
        return Prediction(findings=findings)
