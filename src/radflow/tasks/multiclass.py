"""Multi-class classification: exactly one class per image (a folder per class)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.errors import DataError
from radflow.tasks.base import Finding, LabelSchema, LossFn, Prediction
from radflow.tasks.classification import ClassificationKind
from radflow.tasks.evaluation import EvalData, Figure, ReportTable, auroc_cell, fmt, pct
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
    per_label_key: ClassVar[str] = "per_class"

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
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float | None], unit: str | None
    ) -> Prediction:
        top = int(np.argmax(scores))
        findings = [
            Finding(label, round(float(scores[i]), 6), i == top, thresholds[label], untrained=thresholds[label] is None)
            for i, label in enumerate(labels)
        ]
        return Prediction(findings=findings)

    def evaluate(self, data: EvalData) -> dict[str, Any]:
        """Accuracy, the confusion matrix and per-class metrics over the images with exactly one known class."""
        from radflow.metrics import metrics as M

        mc = M.multiclass_metrics(data.targets, data.scores, data.labels, n_bootstrap=data.n_bootstrap, ci=data.ci)
        dropped = len(data.targets) - mc["n"]
        if dropped:
            data.warnings.append(f"{dropped} image(s) without exactly one known class were left out.")
        return {"metrics": mc}

    def score_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        from radflow.metrics.metrics import multiclass_metrics

        return multiclass_metrics(targets, preds, labels, n_bootstrap=0)

    def pooled_headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        return {"accuracy": result["metrics"]["accuracy"]}

    def figures(
        self, labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, result: Mapping[str, Any]
    ) -> list[Figure]:
        m = result["metrics"]
        # The curves are drawn over the rows the metrics counted: those with a known class.
        y = np.full(scores.shape, np.nan)
        ok = ~np.isnan(targets).any(axis=1)
        y[ok] = targets[ok]
        confusion = Figure(
            "confusion", "confusion.png", {"matrices": {"classes (arg-max)": m["confusion"]}, "names": list(labels)}
        )
        curves = dict(m["calibration"]["per_label"])
        return [confusion, *self.curve_figures(labels, y, scores, m["per_class"], curves, {})]

    def summary(self, result: Mapping[str, Any]) -> list[str | ReportTable]:
        m = result["metrics"]
        ci_pct = f"{result['config']['ci']:.0%}"
        rows = [
            [
                label,
                str(e["n"]),
                pct(e["prevalence"]),
                auroc_cell(e),
                fmt(e["auprc"]),
                fmt(e["sensitivity"]),
                fmt(e["ppv"]),
            ]
            for label, e in m["per_class"].items()
        ]
        columns = ["class", "n", "prevalence", f"AUROC [{ci_pct} CI]", "AUPRC", "sens", "PPV"]
        return [f"accuracy {pct(m['accuracy'])} · macro AUROC {auroc_cell(m['macro'])}", ReportTable(columns, [rows])]
