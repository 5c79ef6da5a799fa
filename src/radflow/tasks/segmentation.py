"""Segmentation: a probability map per structure (lung fields, heart, a pneumothorax), structures may overlap.

The labels of a segmentation dataset are its structures (:attr:`radflow.data.dataset.Dataset.structures`,
in mask bit order); a label column says whether the image shows the structure at all (1 present,
0 absent, NaN not annotated). The network is dense (one logit map per structure at the input's
size) with a sigmoid per structure, because a nodule inside a lung field is in both: a softmax over
structures could not say so. A structure not annotated on an image is left out of the loss and the
metrics of that image only, the multi-label rule for unknown labels applied per map.

Validation watches the mean Dice over structures at a 0.5 threshold. Per image, a structure absent
from both the truth and the prediction has no Dice (it is left out rather than counted perfect, as
MONAI's ``ignore_empty`` does), so a model cannot score well by predicting nothing everywhere.

Not wired yet, so those hooks raise :class:`radflow.tasks.NotBuiltError` naming the missing part:
the evaluation (:func:`radflow.metrics.segmentation.segmentation_report` needs the split's masks,
which :class:`~radflow.tasks.evaluation.EvalData` does not carry yet), answers at the input's size
(:func:`radflow.runtime.masks.structure_answers`, which serving calls: this package cannot import
``radflow.runtime``, which sits below it) and corrected masks as feedback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.tasks.base import LabelSchema, LossFn, NotBuiltError, Prediction, TaskKind, metric_key
from radflow.tasks.evaluation import EvalData, Figure, ReportTable
from radflow.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

__all__ = ["MASK_THRESHOLD", "Segmentation", "dice_per_image", "overlap_counts"]

MASK_THRESHOLD = 0.5
"""Probability at or above which a pixel belongs to a structure, in validation."""

_EVALUATION = (
    "segmentation evaluation (Dice, IoU, HD95 and MSD per structure with CIs, "
    "radflow.metrics.segmentation) is not wired into the report yet: it needs the split's masks; "
    "train with --no-evaluate meanwhile."
)


def overlap_counts(probs: np.ndarray, masks: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Per image and structure: (overlap, predicted area, true area) in pixels, ``(N, K, 3)`` float64.

    ``probs`` and ``masks`` are ``(N, K, H, W)``; a NaN map in ``masks`` (structure not annotated)
    gives NaN counts.
    """
    probs, masks = np.asarray(probs), np.asarray(masks)
    if probs.shape != masks.shape or probs.ndim != 4:
        raise ValueError(f"expected predictions and masks of one (N, K, H, W) shape, got {probs.shape}, {masks.shape}.")
    known = ~np.isnan(masks[:, :, 0, 0])
    truth = np.nan_to_num(masks) >= 0.5
    predicted = probs >= threshold
    out = np.stack([(predicted & truth).sum((2, 3)), predicted.sum((2, 3)), truth.sum((2, 3))], axis=-1).astype(
        np.float64
    )
    out[~known] = np.nan
    return out


def dice_per_image(counts: np.ndarray) -> np.ndarray:
    """Dice ``(N, K)`` from :func:`overlap_counts`; NaN where the structure is unknown or in neither mask."""
    overlap, predicted, true = counts[..., 0], counts[..., 1], counts[..., 2]
    total = predicted + true
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * overlap / total, np.nan)


@register_task
class Segmentation(TaskKind):
    """A sigmoid map per structure; a pixel belongs to every structure whose probability reaches 0.5."""

    name: ClassVar[str] = "segmentation"
    family: ClassVar[Literal["classification", "regression", "segmentation"]] = "segmentation"
    network: ClassVar[Literal["pooled", "dense"]] = "dense"
    default_arch: ClassVar[str | None] = "small_unet"
    label_schema: ClassVar[LabelSchema] = LabelSchema(
        dtype="float32",
        values="per structure: 1 shown in the image, 0 absent; NaN = not annotated (its mask is ignored)",
        nan_policy="unknown",
    )
    losses: ClassVar[tuple[str, ...]] = ("dice_bce", "dice", "bce", "dice_focal")
    monitor: ClassVar[tuple[str, Literal["min", "max"]]] = ("val_mean_dice", "max")
    gate_metrics: ClassVar[tuple[str, ...]] = ("test_mean_dice", "test_dice_<label>")
    online_metric: ClassVar[str] = "mean_dice"
    output: ClassVar[str] = "probability_maps"
    activation: ClassVar[Literal["sigmoid", "softmax", "denormalise"]] = "sigmoid"
    renderer: ClassVar[Literal["findings", "value", "mask"]] = "mask"
    response_key: ClassVar[Literal["findings", "prediction", "structures"]] = "structures"

    # -- data ---------------------------------------------------------------------------------

    def check_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        known = ~np.isnan(train_targets)
        return [
            f"structure {label!r} is in no mask of the train split."
            for j, label in enumerate(labels)
            if known[:, j].any() and not (train_targets[:, j] == 1).any()
        ]

    def untrained_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        """Structures no train image shows: the model never saw one."""
        present = np.nansum(np.asarray(train_targets, dtype=np.float64) == 1, axis=0)
        return [label for j, label in enumerate(labels) if present[j] == 0]

    def pos_weight(self, train_targets: np.ndarray) -> np.ndarray | None:
        """Structure weights (``train.pos_weight``): images without the structure over images with it, at least 1.

        A structure few images show (a pneumothorax beside lung fields every film has) weighs more in
        both loss terms; the loss normalises the weights to mean 1.
        """
        present = np.nansum(train_targets == 1, axis=0)
        known = (~np.isnan(train_targets)).sum(axis=0)
        return np.maximum((known - present) / np.maximum(present, 1), 1.0).astype(np.float32)

    # -- training -------------------------------------------------------------------------------

    def make_loss(self, name: str, pos_weight: torch.Tensor | None = None) -> LossFn:
        from radflow.tasks.losses import segmentation_loss

        return lambda out, masks: segmentation_loss(name, out, masks, pos_weight)

    def activate(self, outputs: torch.Tensor, target_mean: float | None, target_std: float | None) -> torch.Tensor:
        import torch

        return torch.sigmoid(outputs)

    def val_batch(self, preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Overlap and predicted area ``(n, K, 2)`` and true area ``(n, K)`` per image (NaN: not annotated)."""
        counts = overlap_counts(preds, targets)
        return counts[..., :2], counts[..., 2]

    def val_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Mean Dice per structure over the images that show it or where it is predicted (``val_dice_<s>``),
        and their mean over structures (``val_mean_dice``)."""
        dice = dice_per_image(np.concatenate([preds, targets[..., None]], axis=-1))
        out: dict[str, float] = {}
        means = []
        for j, label in enumerate(labels):
            scored = dice[:, j][~np.isnan(dice[:, j])]
            if len(scored):
                out[f"val_dice_{metric_key(label)}"] = float(scored.mean())
                means.append(float(scored.mean()))
        out["val_mean_dice"] = float(np.mean(means)) if means else math.nan
        return out

    def monitor_defined(self, labels: Sequence[str], val_targets: np.ndarray) -> bool:
        """Dice is defined when some val image shows some structure (the label columns say which)."""
        return bool((np.asarray(val_targets) == 1).any())

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, data: EvalData) -> dict[str, Any]:
        raise NotBuiltError(_EVALUATION)

    def quality_metric(
        self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray
    ) -> tuple[Literal["macro_auroc", "mae"], float | None]:
        raise NotBuiltError(f"INT8 acceptance by Dice is not built yet: {_EVALUATION}")

    def headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        raise NotBuiltError(_EVALUATION)

    def figures(
        self, labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, result: Mapping[str, Any]
    ) -> list[Figure]:
        raise NotBuiltError(_EVALUATION)

    def summary(self, result: Mapping[str, Any]) -> list[str | ReportTable]:
        raise NotBuiltError(_EVALUATION)

    # -- serving ------------------------------------------------------------------------------

    def encode(
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float | None], unit: str | None
    ) -> Prediction:
        raise NotBuiltError(
            "segmentation answers (per-structure area, box and COCO RLE at the input's original size) are "
            "made by radflow.runtime.masks.structure_answers, which serving does not call yet; TaskKind.encode "
            "gets the model-size maps but not the input's size."
        )

    def validate_feedback(
        self, outputs: Mapping[str, Any], labels: Mapping[str, int] | None, value: float | None
    ) -> None:
        raise NotBuiltError("corrected masks as feedback are not built yet (the reader UI's brush and eraser).")

    def drift_features(self, labels: Sequence[str]) -> list[str]:
        """The predicted area of each structure (``area:<structure>``)."""
        return [f"area:{label}" for label in labels]
