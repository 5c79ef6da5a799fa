"""What the classification kinds share: probabilities per label, findings as the answer, labels as feedback."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from radflow.tasks.base import InvalidFeedbackError, TaskKind, metric_key
from radflow.tasks.evaluation import Figure

__all__ = ["ClassificationKind"]


class ClassificationKind(TaskKind):
    """A kind whose network outputs one probability per label and whose answer lists findings."""

    family: ClassVar[Literal["classification", "regression", "segmentation"]] = "classification"
    online_metric: ClassVar[str] = "macro_auroc"
    output: ClassVar[str] = "probabilities"
    renderer: ClassVar[Literal["findings", "value", "mask"]] = "findings"
    response_key: ClassVar[Literal["findings", "prediction", "structures"]] = "findings"
    per_label_key: ClassVar[str]
    """Key of the metrics body (:meth:`score_metrics`) that holds each label's entry."""

    def check_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        known = ~np.isnan(train_targets)
        return [
            f"label {label!r} has no positive in the train split."
            for j, label in enumerate(labels)
            if known[:, j].any() and not (train_targets[:, j] == 1).any()
        ]

    def untrained_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        """Labels without a single positive among the train split's known targets."""
        positives = np.nansum(np.asarray(train_targets, dtype=np.float64) == 1, axis=0)
        return [label for j, label in enumerate(labels) if positives[j] == 0]

    def val_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Per-label AUROC (``val_auroc_<label>``) and their mean (``val_macro_auroc``).

        AUROC is skipped for labels whose known validation values hold only one class.
        """
        from sklearn.metrics import roc_auc_score

        out: dict[str, float] = {}
        aurocs = []
        for j, label in enumerate(labels):
            known = ~np.isnan(targets[:, j])
            y = targets[known, j]
            if len(np.unique(y)) == 2:
                auc = float(roc_auc_score(y, preds[known, j]))
                aurocs.append(auc)
                out[f"val_auroc_{metric_key(label)}"] = auc
        out["val_macro_auroc"] = float(np.mean(aurocs)) if aurocs else math.nan
        return out

    def score_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """The kind's :mod:`radflow.metrics` body of probabilities against targets, without a bootstrap."""
        raise NotImplementedError

    def quality_metric(
        self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray
    ) -> tuple[Literal["macro_auroc", "mae"], float | None]:
        return "macro_auroc", self.score_metrics(labels, preds, targets)["macro"]["auroc"]

    def headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        """Macro AUROC (with its interval) and AUPRC, the kind's pooled numbers, then each label's numbers."""
        m = result["metrics"]
        out: dict[str, float | None] = {"macro_auroc": m["macro"]["auroc"], "macro_auprc": m["macro"]["auprc"]}
        if m["macro"].get("auroc_ci"):
            out.update(macro_auroc_ci_low=m["macro"]["auroc_ci"][0], macro_auroc_ci_high=m["macro"]["auroc_ci"][1])
        out.update(self.pooled_headline(result))
        for label, entry in m[self.per_label_key].items():
            out.update(self.label_headline(metric_key(label), entry))
        return out

    def pooled_headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        """Headline numbers over all labels besides macro AUROC and AUPRC (accuracy, micro AUROC, ECE ...)."""
        return {}

    def label_headline(self, key: str, entry: Mapping[str, Any]) -> dict[str, float | None]:
        """One label's headline numbers, named ``<metric>_<key>``; ``auroc_<key>`` is what the gates compare."""
        return {f"auroc_{key}": entry["auroc"], f"auprc_{key}": entry["auprc"]}

    def curve_figures(
        self,
        labels: Sequence[str],
        y: np.ndarray,
        scores: np.ndarray,
        per_label: Mapping[str, Mapping[str, Any]],
        curves: dict[str, Any],
        eces: dict[str, Any],
    ) -> list[Figure]:
        """ROC and PR curves per label and the reliability diagram, the figures every classification report has."""
        aurocs = {label: entry["auroc"] for label, entry in per_label.items()}
        auprcs = {label: entry["auprc"] for label, entry in per_label.items()}
        return [
            Figure("roc", "roc.png", {"y_true": y, "y_score": scores, "labels": list(labels), "aurocs": aurocs}),
            Figure("pr", "pr.png", {"y_true": y, "y_score": scores, "labels": list(labels), "auprcs": auprcs}),
            Figure("reliability", "calibration.png", {"curves": curves, "eces": eces}),
        ]

    def validate_feedback(
        self, outputs: Mapping[str, Any], labels: Mapping[str, int] | None, value: float | None
    ) -> None:
        if value is not None:
            raise InvalidFeedbackError("this prediction has findings; send per-label 'labels', not 'value'.")
        if labels is None:
            return
        known = [f["label"] for f in outputs.get("findings") or []]
        unknown = sorted(set(labels) - set(known))
        if unknown:
            raise InvalidFeedbackError(f"unknown labels {unknown}; the model predicts {', '.join(known)}.")
        bad = {label: v for label, v in labels.items() if v not in (0, 1)}
        if bad:
            raise InvalidFeedbackError(f"label values must be 0 or 1, got {bad}.")

    def drift_features(self, labels: Sequence[str]) -> list[str]:
        return [f"score:{label}" for label in labels]
