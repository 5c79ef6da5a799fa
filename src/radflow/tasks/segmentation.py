"""Segmentation: a probability map per structure (lung fields, heart, a pneumothorax), structures may overlap.

The labels of a segmentation dataset are its structures (:attr:`radflow.data.dataset.Dataset.structures`,
in mask bit order); a label column says whether the image shows the structure at all (1 present,
0 absent, NaN not annotated). The network is dense (one logit map per structure at the input's
size) with a sigmoid per structure, because a nodule inside a lung field is in both: a softmax over
structures could not say so. A structure not annotated on an image is left out of the loss and the
validation metrics of that image only, the multi-label rule for unknown labels applied per map (the
evaluation's :mod:`radflow.metrics.segmentation` has no unknown masks yet: it scores them as absent,
and the report says how many images that concerns).

Validation watches the mean Dice over structures at a 0.5 threshold. Per image, a structure absent
from both the truth and the prediction has no Dice (it is left out rather than counted perfect, as
MONAI's ``ignore_empty`` does), so a model cannot score well by predicting nothing everywhere.

Evaluation is :func:`radflow.metrics.segmentation.segmentation_report` on the masks at 0.5, given
the split's true masks in :attr:`EvalData.masks <radflow.tasks.evaluation.EvalData.masks>`; the
figures are a gallery of the test images with the lowest Dice, and INT8 acceptance compares mean
Dice. Not wired yet, so those hooks raise :class:`radflow.tasks.NotBuiltError` naming the missing
part: answers at the input's size (:func:`radflow.runtime.masks.structure_answers`, which serving
calls: this package cannot import ``radflow.runtime``, which sits below it). A reader's correction is
the corrected masks, COCO RLE per structure at the input's size (:meth:`Segmentation.validate_feedback`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.data.rle import decode_rle
from radflow.errors import DataError, did_you_mean
from radflow.tasks.base import (
    InvalidFeedbackError,
    LabelSchema,
    LossFn,
    NotBuiltError,
    Prediction,
    TaskKind,
    metric_key,
)
from radflow.tasks.evaluation import EvalData, Figure, ReportTable, fmt
from radflow.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

__all__ = ["LESION_STRUCTURES", "MASK_THRESHOLD", "WORST_CASES", "Segmentation", "dice_per_image", "overlap_counts"]

MASK_THRESHOLD = 0.5
"""Probability at or above which a pixel belongs to a structure, in validation and evaluation."""
LESION_STRUCTURES = ("Pleural Effusion", "Pneumothorax", "Lung Lesion")
"""Structures that also get detection metrics unless the evaluation names others: the lesion-type findings
the chest phantoms draw and SIIM-ACR annotates (``EvalData.lesion_structures`` None)."""
WORST_CASES = 8
"""Images the worst-cases gallery shows."""

_EVALUATION = (
    "segmentation evaluation (Dice, IoU, HD95 and MSD per structure with CIs) needs the split's true masks "
    "(EvalData.masks), which only the report of a dense kind's split passes."
)
_SCORES = ("dice", "iou", "hd95", "msd")


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
        """Dice, IoU, HD95 and MSD per structure with bootstrap CIs over patients, lesion detection, subgroups.

        Predicted masks are the maps at :data:`MASK_THRESHOLD`; distances are in mm when
        ``data.spacing`` is known, else in pixels.
        """
        from radflow.metrics.segmentation import segmentation_report

        if data.masks is None:
            raise NotBuiltError(_EVALUATION)
        if data.scores.shape != data.masks.shape:
            raise ValueError(f"probability maps {data.scores.shape} and masks {data.masks.shape} differ in shape.")
        lesions = LESION_STRUCTURES if data.lesion_structures is None else data.lesion_structures
        report = segmentation_report(
            _predicted(data.scores),
            data.masks.astype(bool),
            data.labels,
            data.manifest["patient_id"].astype(str).to_numpy(),
            data.spacing,
            [s for s in lesions if s in data.labels],
            manifest=data.manifest,
            age_bands=data.age_bands,
            n_bootstrap=data.n_bootstrap,
            ci=data.ci,
        )
        unannotated = np.isnan(np.asarray(data.targets, dtype=np.float64)).sum(axis=0)
        for label, count in zip(data.labels, unannotated, strict=True):
            if count:
                data.warnings.append(
                    f"{label}: not annotated on {int(count)} {data.split} image(s); the metrics score their empty "
                    "masks as truth (the structure absent)."
                )
        for label, entry in report["per_structure"].items():
            if entry["dice"] is None:
                data.warnings.append(f"{label}: in no true or predicted mask of the {data.split} split; no Dice.")
        return {"metrics": report, "threshold": MASK_THRESHOLD, "subgroups": report.pop("subgroups")}

    def quality_metric(
        self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray
    ) -> tuple[Literal["macro_auroc", "mae", "mean_dice"], float | None]:
        """``mean_dice`` (higher better), as validation measures it (``val_mean_dice``).

        ``preds`` are the probability maps (or masks) ``(n, K, S, S)``, ``targets`` the true masks of
        the same shape (NaN maps: not annotated); None when no image shows or predicts any structure.
        """
        preds, targets = np.asarray(preds), np.asarray(targets)
        if preds.ndim != 4 or preds.shape != targets.shape:
            raise ValueError(
                f"mean Dice needs predicted maps and true masks of one (n, K, S, S) shape, got {preds.shape} "
                f"and {targets.shape}."
            )
        value = self.val_metrics(labels, *self.val_batch(preds, targets))["val_mean_dice"]
        return "mean_dice", None if math.isnan(value) else value

    def headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        """``mean_dice`` (with its CI), the other macro means, and per structure its scores and lesion detection."""
        m = result["metrics"]
        macro = m["macro"]
        out: dict[str, float | None] = {f"mean_{name}": macro[name] for name in _SCORES}
        if macro.get("dice_ci"):
            out.update(mean_dice_ci_low=macro["dice_ci"][0], mean_dice_ci_high=macro["dice_ci"][1])
        for label, entry in m["per_structure"].items():
            key = metric_key(label)
            for name in _SCORES:
                out[f"{name}_{key}"] = entry[name]
            lesion = entry.get("lesion")
            if lesion:
                for name in ("sensitivity", "specificity", "lesion_recall"):
                    out[f"{name}_{key}"] = lesion[name]
        return out

    def figures(
        self, labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, result: Mapping[str, Any]
    ) -> list[Figure]:
        """The worst-cases gallery: the :data:`WORST_CASES` images of lowest mean Dice, image, truth and prediction.

        ``targets`` are the split's true masks and ``scores`` its predicted masks (or maps), both
        ``(n, K, S, S)``. An image's mean Dice is over the structures it has one for (in its truth or
        prediction); images with none are not ranked. No figure when no image is.
        """
        pred, truth = _predicted(np.asarray(scores)), np.asarray(targets).astype(bool)
        if pred.ndim != 4 or pred.shape != truth.shape:
            raise ValueError(f"predicted masks {pred.shape} and true masks {truth.shape} differ in shape.")
        dice = dice_per_image(overlap_counts(pred, truth))
        defined = ~np.isnan(dice)
        ranked = np.flatnonzero(defined.any(axis=1))
        if not len(ranked):
            return []
        mean = np.nanmean(dice[ranked], axis=1)
        worst = ranked[np.argsort(mean, kind="stable")[:WORST_CASES]]
        args = {"truth": truth[worst], "pred": pred[worst], "dice": dice[worst], "structures": list(labels)}
        return [Figure("worst_cases", "worst_cases.png", args, images=tuple(int(i) for i in worst))]

    def summary(self, result: Mapping[str, Any]) -> list[str | ReportTable]:
        m = result["metrics"]
        ci_pct = f"{m['ci']:.0%}"

        def cell(entry: Mapping[str, Any], name: str) -> str:
            value, ci = entry.get(name), entry.get(f"{name}_ci")
            return f"{fmt(value)} [{fmt(ci[0])}-{fmt(ci[1])}]" if value is not None and ci else fmt(value)

        rows = [
            [label, str(e["n"]), str(e["truth_present"]), *(cell(e, name) for name in _SCORES)]
            for label, e in m["per_structure"].items()
        ]
        macro = [["mean", "", "", *(cell(m["macro"], name) for name in _SCORES)]]
        unit = m["unit"]
        columns = ["structure", "n", "shown", f"Dice [{ci_pct} CI]", "IoU", f"HD95 ({unit})", f"MSD ({unit})"]
        out: list[str | ReportTable] = [
            ReportTable(columns, [rows, macro], title=f"masks at probability >= {result['threshold']:g}")
        ]
        lesions = [
            [
                label,
                cell(e["lesion"], "sensitivity"),
                cell(e["lesion"], "specificity"),
                cell(e["lesion"], "lesion_recall"),
                str(e["lesion"]["false_positive_lesions"]),
            ]
            for label, e in m["per_structure"].items()
            if e.get("lesion")
        ]
        if lesions:
            columns = ["structure", "any-lesion sens", "any-lesion spec", "lesion recall", "false lesions"]
            out.append(ReportTable(columns, [lesions], title="lesion detection"))
        return out

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
        self, outputs: Mapping[str, Any], labels: Mapping[str, Any] | None, value: float | None
    ) -> None:
        """A correction is ``labels = {"masks": {structure: COCO RLE}}`` at the answer's size.

        Each corrected structure must be one the answer has, its RLE ``size`` the answer's (the input's
        original ``[h, w]``), and its counts must cover that image exactly; structures left out were not
        corrected (the online Dice and the export skip them). A ``value`` means nothing to masks.
        """
        if value is not None:
            raise InvalidFeedbackError(
                "segmentation feedback is corrected masks in 'labels': {'masks': ...}, not a value."
            )
        if not labels or set(labels) != {"masks"} or not isinstance(labels["masks"], Mapping) or not labels["masks"]:
            raise InvalidFeedbackError(
                "segmentation feedback sends 'labels': {'masks': {STRUCTURE: {'size': [h, w], 'counts': ...}}}, "
                f"COCO RLE per corrected structure; got labels with keys {sorted(labels or {})}."
            )
        answered = {s["structure"]: s for s in outputs.get("structures") or []}
        for name, rle in labels["masks"].items():
            field = f"labels.masks[{name!r}]"
            if name not in answered:
                hint = did_you_mean(str(name), answered)
                raise InvalidFeedbackError(
                    f"{field}: the prediction has no structure {name!r}; it has {', '.join(answered)}.{hint}"
                )
            if not isinstance(rle, Mapping) or set(rle) != {"size", "counts"}:
                raise InvalidFeedbackError(f"{field} must be COCO RLE {{'size': [h, w], 'counts': ...}}.")
            size = list(answered[name]["rle"]["size"])
            if rle["size"] != size:
                raise InvalidFeedbackError(
                    f"{field}.size is {rle['size']!r}; the prediction's input is {size} (height, width)."
                )
            try:
                decode_rle(rle, field)
            except DataError as err:
                raise InvalidFeedbackError(str(err)) from None

    def drift_features(self, labels: Sequence[str]) -> list[str]:
        """The predicted area of each structure (``area:<structure>``)."""
        return [f"area:{label}" for label in labels]


def _predicted(scores: np.ndarray) -> np.ndarray:
    """Predicted masks: boolean ``scores`` as they are (the report thresholds batch by batch), maps at 0.5."""
    return scores if scores.dtype == bool else scores >= MASK_THRESHOLD
