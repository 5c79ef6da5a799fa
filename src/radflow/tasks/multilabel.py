"""Multi-label classification: any number of findings per image (chest X-ray: NIH, CheXpert)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.tasks.base import DEFAULT_THRESHOLD, Finding, LabelSchema, LossFn, Prediction
from radflow.tasks.classification import ClassificationKind
from radflow.tasks.evaluation import EvalData, Figure, ReportTable, auroc_cell, fmt, pct
from radflow.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

__all__ = ["COMPATIBLE_WITH_NO_FINDING", "NO_FINDING", "Multilabel", "contradiction_counts", "contradictions"]

NO_FINDING = "No Finding"
"""The CheXpert/NIH label that says the image shows none of the other findings."""
COMPATIBLE_WITH_NO_FINDING = frozenset({"Support Devices"})
"""Labels that may be positive beside "No Finding": CheXpert's labeler sets No Finding when no
pathology is found, and lines, tubes or pacemakers are not pathology."""


def contradictions(positives: Sequence[str]) -> list[dict[str, Any]]:
    """ "No Finding" called positive together with a finding: the answer contradicts itself.

    Returns ``[]`` or one ``{"labels": ["No Finding", ...], "message"}``; shown in the answer, never
    resolved silently, because which side is wrong is for a reader to decide.
    """
    if NO_FINDING not in positives:
        return []
    others = [p for p in positives if p != NO_FINDING and p not in COMPATIBLE_WITH_NO_FINDING]
    if not others:
        return []
    return [
        {"labels": [NO_FINDING, *others], "message": f"{NO_FINDING!r} is positive together with {', '.join(others)}"}
    ]


def contradiction_counts(
    labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, thresholds: Mapping[str, float]
) -> dict[str, Any] | None:
    """How many images have "No Finding" positive beside another finding: in the labels and in the predictions.

    ``None`` when the label set has no "No Finding". Predictions count only labels with a threshold.
    """
    if NO_FINDING not in labels:
        return None
    j = list(labels).index(NO_FINDING)
    others = [i for i, label in enumerate(labels) if i != j and label not in COMPATIBLE_WITH_NO_FINDING]
    in_labels = (targets[:, j] == 1) & (targets[:, others] == 1).any(axis=1) if others else np.zeros(len(targets), bool)
    predicted = np.zeros(len(scores), dtype=bool)
    if NO_FINDING in thresholds:
        called = [i for i in others if labels[i] in thresholds]
        cuts = np.array([thresholds[labels[i]] for i in called])
        if called:
            predicted = (scores[:, j] >= thresholds[NO_FINDING]) & (scores[:, called] >= cuts).any(axis=1)
    return {
        "rule": f"{NO_FINDING!r} positive together with another finding"
        + (f" (except {', '.join(sorted(COMPATIBLE_WITH_NO_FINDING))})" if COMPATIBLE_WITH_NO_FINDING else ""),
        "n": len(scores),
        "predicted": int(predicted.sum()),
        "labels": int(in_labels.sum()),
    }


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
    per_label_key: ClassVar[str] = "per_label"

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
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float | None], unit: str | None
    ) -> Prediction:
        """Findings at their thresholds; a label without one (never learned) is flagged and never positive."""
        findings = []
        for i, label in enumerate(labels):
            threshold = thresholds[label]
            positive = threshold is not None and bool(scores[i] >= threshold)
            findings.append(
                Finding(label, round(float(scores[i]), 6), positive, threshold, untrained=threshold is None)
            )
        prediction = Prediction(findings=findings)
        prediction.contradictions = contradictions(prediction.positives)
        return prediction

    def evaluate(self, data: EvalData) -> dict[str, Any]:
        """Per-finding metrics at operating points chosen on the val split, calibration and subgroups.

        Thresholds come from the val split so test metrics are not tuned on the test images; without
        a val split they come from the checkpoint (or the default).
        """
        from radflow.metrics import metrics as M

        labels = data.labels
        val = data.val()
        if val is not None:
            val_targets, val_scores = val
            per_label = M.choose_thresholds(
                val_targets,
                val_scores,
                labels,
                data.threshold_method,
                data.target_sensitivity,
                dict(data.stored_thresholds) if data.stored_thresholds is not None else None,
            )
            chosen_on = "val"
            if data.split == "val":
                data.warnings.append(
                    "thresholds were chosen on the split being evaluated (val); binary metrics are optimistic."
                )
        else:
            stored = data.stored_thresholds or {}
            per_label = {
                label: {
                    "threshold": float(stored.get(label, DEFAULT_THRESHOLD)),
                    "source": "checkpoint" if label in stored else f"default {DEFAULT_THRESHOLD}",
                }
                for label in labels
            }
            chosen_on = "checkpoint" if stored else "default"
            data.warnings.append("the dataset has no val split; thresholds come from the checkpoint (or 0.5).")
        for label in data.untrained:
            if label in per_label:
                # No threshold at all rather than a default 0.5 that would look like an operating point.
                per_label[label] = {
                    "threshold": None,
                    "source": "none: no positive in the train split (never called positive)",
                    "n": per_label[label].get("n"),
                }
                data.warnings.append(
                    f"{label}: no positive in the train split; the model never learned it, so it gets no "
                    "threshold and is flagged untrained in the model's metadata and answers."
                )
        thresholds = {
            label: float(entry["threshold"]) for label, entry in per_label.items() if entry["threshold"] is not None
        }
        result = M.multilabel_metrics(
            data.targets,
            data.scores,
            labels,
            thresholds,
            n_bootstrap=data.n_bootstrap,
            ci=data.ci,
            calibration_bins=data.calibration_bins,
        )
        for label, entry in result["per_label"].items():
            if entry["reason"]:
                data.warnings.append(f"{label}: {entry['reason']}.")
        calibration = result.pop("calibration")
        found = contradiction_counts(labels, data.targets, data.scores, thresholds)
        if found and found["predicted"]:
            data.warnings.append(
                f"{found['predicted']} of {found['n']} images are predicted {found['rule']}; "
                "such answers carry a 'contradictions' entry."
            )
        return {
            "contradictions": found,
            "untrained_labels": [label for label in data.untrained if label in labels],
            "thresholds": {
                "method": data.threshold_method,
                "target_sensitivity": data.target_sensitivity if data.threshold_method == "sensitivity" else None,
                "chosen_on": chosen_on,
                "per_label": per_label,
            },
            "metrics": result,
            "calibration": calibration,
            "subgroups": M.subgroup_metrics(data.targets, data.scores, labels, data.manifest, data.age_bands),
        }

    def score_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        from radflow.metrics.metrics import multilabel_metrics

        return multilabel_metrics(targets, preds, labels, n_bootstrap=0)

    def pooled_headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        m = result["metrics"]
        out: dict[str, float | None] = {"micro_auroc": m["micro"]["auroc"], "ece": result["calibration"]["ece_pooled"]}
        if result.get("contradictions"):
            out["contradictions"] = result["contradictions"]["predicted"]
        return out

    def label_headline(self, key: str, entry: Mapping[str, Any]) -> dict[str, float | None]:
        # Class counts beside each AUROC: the gates judge a label only when it has enough of both.
        return {
            f"positives_{key}": entry["positives"],
            f"negatives_{key}": entry["n"] - entry["positives"],
            **super().label_headline(key, entry),
            f"sensitivity_{key}": entry.get("sensitivity"),
            f"specificity_{key}": entry.get("specificity"),
        }

    def figures(
        self, labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, result: Mapping[str, Any]
    ) -> list[Figure]:
        per = result["metrics"]["per_label"]
        matrices = {
            f"{label} @ {entry['threshold']:.3g}": [
                [entry["confusion"]["tn"], entry["confusion"]["fp"]],
                [entry["confusion"]["fn"], entry["confusion"]["tp"]],
            ]
            for label, entry in per.items()
            if entry.get("confusion")
        }
        calibration = result["calibration"]
        curves = {"all labels": calibration["pooled"]}
        eces = {"all labels": calibration["ece_pooled"], **{label: per[label]["ece"] for label in labels}}
        if len(labels) <= 6:
            curves.update(calibration["per_label"])
        return [
            Figure("confusion", "confusion.png", {"matrices": matrices}),
            *self.curve_figures(labels, targets, scores, per, curves, eces),
        ]

    def summary(self, result: Mapping[str, Any]) -> list[str | ReportTable]:
        m = result["metrics"]
        how = result["thresholds"]
        ci_pct = f"{result['config']['ci']:.0%}"
        rows = [
            [
                label,
                str(e["n"]),
                pct(e["prevalence"]),
                auroc_cell(e),
                fmt(e["auprc"]),
                fmt(e.get("sensitivity")),
                fmt(e.get("specificity")),
                fmt(e.get("threshold")),
            ]
            for label, e in m["per_label"].items()
        ]
        macro, micro = m["macro"], m["micro"]
        pooled = [
            [
                "macro",
                "",
                "",
                auroc_cell(macro),
                fmt(macro["auprc"]),
                fmt(macro["sensitivity"]),
                fmt(macro["specificity"]),
                "",
            ],
            [
                "micro",
                str(micro["n"]),
                "",
                auroc_cell(micro),
                fmt(micro["auprc"]),
                fmt(micro.get("sensitivity")),
                fmt(micro.get("specificity")),
                "",
            ],
        ]
        columns = ["label", "n", "prevalence", f"AUROC [{ci_pct} CI]", "AUPRC", "sens", "spec", "threshold"]
        out: list[str | ReportTable] = [
            ReportTable(columns, [rows, pooled], title=f"thresholds: {how['method']} on {how['chosen_on']}"),
            f"calibration: ECE {fmt(result['calibration']['ece_pooled'])} ({result['calibration']['bins']} bins)",
        ]
        found = result.get("contradictions")
        if found:
            out.append(
                f"contradictions ({found['rule']}): {found['predicted']} of {found['n']} predicted, "
                f"{found['labels']} in the labels"
            )
        if result.get("untrained_labels"):
            out.append(f"untrained (no positive in train; no threshold): {', '.join(result['untrained_labels'])}")
        if result.get("subgroups"):
            sub = [
                [grouping, value, str(entry["n"]), fmt(entry["macro_auroc"])]
                for grouping, groups in result["subgroups"].items()
                for value, entry in groups.items()
            ]
            out.append(ReportTable(["subgroup", "value", "n", "macro AUROC"], [sub], title="subgroups"))
        return out
