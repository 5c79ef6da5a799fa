"""Regression: one value per image in a unit (bone age in months, from the image and the sex)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.tasks.base import InvalidFeedbackError, LabelSchema, LossFn, Prediction, TaskKind, metric_key
from radflow.tasks.evaluation import EvalData, Figure, ReportTable, fmt
from radflow.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

__all__ = ["Regression"]


@register_task
class Regression(TaskKind):
    """One value; trained on standardised targets, answered in the target unit."""

    name: ClassVar[str] = "regression"
    family: ClassVar[Literal["classification", "regression", "segmentation"]] = "regression"
    label_schema: ClassVar[LabelSchema] = LabelSchema(
        dtype="float32", values="one number in the target unit; NaN = unknown", nan_policy="unknown"
    )
    losses: ClassVar[tuple[str, ...]] = ("l1",)
    monitor: ClassVar[tuple[str, Literal["min", "max"]]] = ("val_mae", "min")
    gate_metrics: ClassVar[tuple[str, ...]] = ("test_mae",)
    online_metric: ClassVar[str] = "mae"
    output: ClassVar[str] = "value"
    activation: ClassVar[Literal["sigmoid", "softmax", "denormalise"]] = "denormalise"
    renderer: ClassVar[Literal["findings", "value", "mask"]] = "value"
    response_key: ClassVar[Literal["findings", "prediction", "structures"]] = "prediction"
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

    def default_age_bands(self) -> list[float] | None:
        # Bone age is in months; the config's default bands are the chest sets' years.
        from radflow.metrics.metrics import REGRESSION_AGE_BANDS

        return list(REGRESSION_AGE_BANDS)

    def evaluate(self, data: EvalData) -> dict[str, Any]:
        """MAE, RMSE and bias with a bootstrap interval, and the error by band of the true value (and by sex)."""
        from radflow.metrics import metrics as M

        sex = data.manifest["sex"].fillna("").astype(str).to_numpy() if "sex" in data.manifest else None
        reg = M.regression_metrics(
            data.targets[:, 0],
            data.scores[:, 0],
            data.age_bands,
            n_bootstrap=data.n_bootstrap,
            ci=data.ci,
            sex=sex,
        )
        return {"metrics": reg, "unit": data.unit}

    def quality_metric(
        self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray
    ) -> tuple[Literal["macro_auroc", "mae"], float | None]:
        from radflow.metrics.metrics import regression_metrics

        return "mae", regression_metrics(targets[:, 0], preds[:, 0], n_bootstrap=0)["mae"]

    def headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        m = result["metrics"]
        out: dict[str, float | None] = {"mae": m["mae"], "rmse": m["rmse"], "bias": m["bias"]}
        if m.get("mae_ci"):
            out.update(mae_ci_low=m["mae_ci"][0], mae_ci_high=m["mae_ci"][1])
        for band, entry in m["by_band"].items():
            out[f"mae_{metric_key(band)}"] = entry["mae"]
        return out

    def figures(
        self, labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, result: Mapping[str, Any]
    ) -> list[Figure]:
        unit = result.get("unit")
        return [
            Figure("scatter", "scatter.png", {"y_true": targets[:, 0], "y_pred": scores[:, 0], "unit": unit}),
            Figure("error_by_band", "error_by_band.png", {"by_band": result["metrics"]["by_band"], "unit": unit}),
        ]

    def summary(self, result: Mapping[str, Any]) -> list[str | ReportTable]:
        m = result["metrics"]
        unit = f" {result['unit']}" if result.get("unit") else ""
        ci = m.get("mae_ci")
        ci_text = f" [{fmt(ci[0], 2)}-{fmt(ci[1], 2)}]" if ci else ""
        rows = [
            [band, str(entry["n"]), fmt(entry["mae"], 2), fmt(entry["bias"], 2)] for band, entry in m["by_band"].items()
        ]
        return [
            f"MAE {fmt(m['mae'], 2)}{unit}{ci_text} · RMSE {fmt(m['rmse'], 2)} · bias {fmt(m['bias'], 2)} · "
            f"target sd {fmt(m.get('target_std'), 2)}",
            ReportTable(["band", "n", "MAE", "bias"], [rows], title="error by band of the true value"),
        ]

    def encode(
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float | None], unit: str | None
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
