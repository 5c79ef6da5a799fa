"""Detection: scored boxes per finding label (lung opacities, nodules), at the input's original size.

The labels of a detection dataset are its box labels (``dataset.json`` ``boxes.labels``); a label
column says whether the image's training boxes hold one of that label, and the boxes themselves
(:mod:`radflow.data.boxes`, training size) are the targets: per image ``(M, 5)`` ``x0, y0, x1, y1,
label index``, NaN rows padding images with fewer boxes to the dataset's most.

The network is a torchvision detector (:func:`radflow.train.models.fcos_small`) whose loss is its
own (FCOS's focal classification, GIoU box and centre-ness terms, summed). Its raw output per anchor
is a decoded box with class and centre-ness logits; :meth:`Detection.activate` (also in the exported
graph) makes FCOS's scores ``sqrt(sigmoid(class) * sigmoid(centre-ness))``, and
:func:`select_detections` (NumPy, torch-free) keeps the boxes: score threshold, per-label non-maximum
suppression, best :data:`MAX_DETECTIONS`. Validation and serving call the same function, so what the
runtime answers is what validation measured.

Validation watches mAP at IoU 0.5 (COCO's AP, :func:`radflow.metrics.detection.average_precision`);
the evaluation is :func:`radflow.metrics.detection.detection_metrics` (AP50, mAP@[.5:.95], FROC and its
CPM, image AUROC, with patient-level bootstrap CIs). Serving answers ``{"boxes": [{"label", "score", "box"}]}`` in the
input's original pixel coordinates (the runtime maps them back with :func:`radflow.data.boxes.to_original`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.errors import did_you_mean
from radflow.metrics.detection import box_iou
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

__all__ = [
    "MAX_DETECTIONS",
    "NMS_IOU",
    "SCORE_THRESHOLD",
    "Detection",
    "detection_features",
    "pad_rows",
    "select_detections",
]

SCORE_THRESHOLD = 0.05
"""Lowest score a box is kept at (low, as detectors are scored over their whole ranking: AP, FROC)."""
NMS_IOU = 0.5
"""Boxes of one label overlapping a better one at least this much are suppressed."""
MAX_DETECTIONS = 100
"""Most boxes answered per image, best first."""
TOP_CANDIDATES = 1000
"""Boxes above the threshold kept for NMS, best first."""


def select_detections(
    activated: np.ndarray,
    score_threshold: float = SCORE_THRESHOLD,
    iou: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> np.ndarray:
    """One image's boxes ``(m, 6)`` ``x0, y0, x1, y1, label index, score``, best first, from its activated
    anchors ``(A, 4 + K)`` (box, score per label): every (anchor, label) above ``score_threshold``, the best
    :data:`TOP_CANDIDATES`, greedy NMS per label at ``iou`` (torchvision's ``batched_nms``), the best
    ``max_detections`` kept."""
    activated = np.asarray(activated, dtype=np.float32)
    boxes, scores = activated[:, :4], activated[:, 4:]
    anchor, label = np.nonzero(scores > score_threshold)
    score = scores[anchor, label]
    order = np.argsort(-score, kind="stable")[:TOP_CANDIDATES]
    anchor, label, score = anchor[order], label[order], score[order]
    candidates = boxes[anchor]
    keep: list[int] = []
    for k in np.unique(label):
        mine = np.flatnonzero(label == k)  # best first
        overlap = box_iou(candidates[mine], candidates[mine])
        alive = np.ones(len(mine), dtype=bool)
        for i in range(len(mine)):
            if alive[i]:
                keep.append(int(mine[i]))
                alive[i + 1 :] &= overlap[i, i + 1 :] <= iou
    kept = np.array(sorted(keep, key=lambda i: (-score[i], i)), dtype=np.int64)[:max_detections]
    return np.concatenate([candidates[kept], label[kept, None].astype(np.float32), score[kept, None]], axis=1).astype(
        np.float32
    )


def pad_rows(rows: Sequence[np.ndarray], width: int, columns: int) -> np.ndarray:
    """Per-image rows stacked ``(n, width, columns)`` float32, NaN rows padding the shorter ones."""
    out = np.full((len(rows), width, columns), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.float32).reshape(-1, columns)[:width]
        out[i, : len(r)] = r
    return out


def _unpad(padded: np.ndarray) -> list[np.ndarray]:
    return [p[~np.isnan(p[:, 0])] for p in np.asarray(padded)]


def detection_features(detections: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """One image's drift features from its boxes ``(m, 6)``: boxes per label and the top score per label (0: none)."""
    out: dict[str, float] = {}
    for k, label in enumerate(labels):
        mine = detections[detections[:, 4] == k]
        out[f"boxes:{label}"] = float(len(mine))
        out[f"top_score:{label}"] = float(mine[:, 5].max()) if len(mine) else 0.0
    return out


@register_task
class Detection(TaskKind):
    """Scored boxes per label from a torchvision detector, kept by score threshold and per-label NMS."""

    name: ClassVar[str] = "detection"
    family: ClassVar[Literal["classification", "regression", "segmentation", "detection"]] = "detection"
    network: ClassVar[Literal["pooled", "dense", "detection"]] = "detection"
    default_arch: ClassVar[str | None] = "fcos_small"
    label_schema: ClassVar[LabelSchema] = LabelSchema(
        dtype="float32",
        values="per box label: 1 the image's training boxes hold one, 0 none; the boxes are the targets",
        nan_policy="unknown",
    )
    losses: ClassVar[tuple[str, ...]] = ("detector",)
    monitor: ClassVar[tuple[str, Literal["min", "max"]]] = ("val_map50", "max")
    gate_metrics: ClassVar[tuple[str, ...]] = ("test_map50", "test_ap50_<label>")
    online_metric: ClassVar[str] = "map50"
    output: ClassVar[str] = "detections"
    activation: ClassVar[Literal["sigmoid", "softmax", "denormalise"]] = "sigmoid"
    renderer: ClassVar[Literal["findings", "value", "mask", "boxes"]] = "boxes"
    response_key: ClassVar[Literal["findings", "prediction", "structures", "boxes"]] = "boxes"

    # -- data ---------------------------------------------------------------------------------

    def check_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        present = np.nansum(np.asarray(train_targets, dtype=np.float64) == 1, axis=0)
        return [
            f"box label {label!r} has no box in the train split." for j, label in enumerate(labels) if not present[j]
        ]

    def untrained_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        """Box labels no train image has a box of."""
        present = np.nansum(np.asarray(train_targets, dtype=np.float64) == 1, axis=0)
        return [label for j, label in enumerate(labels) if present[j] == 0]

    # -- training -------------------------------------------------------------------------------

    def make_loss(self, name: str, pos_weight: torch.Tensor | None = None) -> LossFn:
        """``detector``: the sum of the loss terms the detector returns when given targets (its own losses)."""
        return lambda terms, targets: terms.sum()

    def activate(self, outputs: torch.Tensor, target_mean: float | None, target_std: float | None) -> torch.Tensor:
        """Per anchor ``(..., 4 + K + 1)`` box, class and centre-ness logits -> box and FCOS's score per label."""
        import torch

        boxes, logits, centre = outputs[..., :4], outputs[..., 4:-1], outputs[..., -1:]
        return torch.cat([boxes, torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centre))], dim=-1)

    def val_batch(self, preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image's kept boxes ``(n, MAX_DETECTIONS, 6)`` (NaN padded) and its true boxes as they came."""
        return pad_rows([select_detections(p) for p in preds], MAX_DETECTIONS, 6), np.asarray(targets)

    def val_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """COCO AP at IoU 0.5 per label with a true box in the split (``val_ap50_<label>``), their mean
        ``val_map50``."""
        from radflow.metrics.detection import average_precision

        ap = average_precision(_unpad(preds), _unpad(targets), len(labels), [0.5], max_detections=MAX_DETECTIONS)
        out = {
            f"val_ap50_{metric_key(label)}": float(entry["ap50"])
            for label, entry in zip(labels, ap["per_class"], strict=True)
            if entry["ap50"] is not None
        }
        out["val_map50"] = math.nan if ap["ap50"] is None else float(ap["ap50"])
        return out

    def monitor_defined(self, labels: Sequence[str], val_targets: np.ndarray) -> bool:
        """mAP50 is defined when some val image has a box (the label columns say which)."""
        return bool((np.asarray(val_targets) == 1).any())

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, data: EvalData) -> dict[str, Any]:
        """AP50, mAP@[.5:.95], FROC/CPM and image AUROC per label with patient-level bootstrap CIs.

        ``data.scores`` are the split's kept boxes ``(n, D, 6)`` and ``data.targets`` its true boxes
        ``(n, M, 5)`` at model size, NaN rows padding (as :meth:`val_batch` keeps them).
        """
        from radflow.metrics.detection import detection_metrics

        scores, targets = np.asarray(data.scores), np.asarray(data.targets)
        if scores.ndim != 3 or scores.shape[2] != 6 or targets.ndim != 3 or targets.shape[2] != 5:
            raise NotBuiltError(
                "detection evaluation needs the split's kept boxes (n, D, 6) and true boxes (n, M, 5) in "
                f"EvalData.scores/targets, got {scores.shape} and {targets.shape}; the report does not pass them yet."
            )
        report = detection_metrics(
            _unpad(scores),
            _unpad(targets),
            data.labels,
            data.manifest["patient_id"].astype(str).to_numpy() if "patient_id" in data.manifest else None,
            n_boot=data.n_bootstrap,
            ci=data.ci,
        )
        for label, entry in report["per_class"].items():
            if not entry["truths"]:
                data.warnings.append(f"{label}: no true box in the {data.split} split; no AP.")
        return {"metrics": report, "score_threshold": SCORE_THRESHOLD, "nms_iou": NMS_IOU}

    def quality_metric(
        self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray
    ) -> tuple[Literal["macro_auroc", "mae", "mean_dice", "map50"], float | None]:
        """``map50`` (higher better) as validation measures it; ``preds`` are kept boxes ``(n, D, 6)`` and
        ``targets`` true boxes ``(n, M, 5)``, NaN padded."""
        value = self.val_metrics(labels, preds, targets)["val_map50"]
        return "map50", None if math.isnan(value) else value

    def headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        """``map50`` (with its CI), ``map``, ``froc_cpm`` (the gates' ``test_froc_cpm``), ``image_auroc``; per
        label ``ap50_<l>``, ``map_<l>``, ``froc_cpm_<l>``."""
        m = result["metrics"]
        out: dict[str, float | None] = {
            "map50": m["ap50"],
            "map": m["map"],
            "froc_cpm": m["cpm"],
            "image_auroc": m["image_auroc"],
        }
        if m.get("ap50_ci"):
            out.update(map50_ci_low=m["ap50_ci"][0], map50_ci_high=m["ap50_ci"][1])
        for label, entry in m["per_class"].items():
            key = metric_key(label)
            out.update({f"ap50_{key}": entry["ap50"], f"map_{key}": entry["map"], f"froc_cpm_{key}": entry["cpm"]})
        return out

    def figures(
        self, labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, result: Mapping[str, Any]
    ) -> list[Figure]:
        """The FROC curves, pooled and per label, from the body's points (``metrics.froc``, ``fp_rates``)."""
        m = result["metrics"]
        args = {
            "fp_rates": list(m["fp_rates"]),
            "pooled": m["froc"],  # None for a curve without a true box
            "per_class": {label: e["froc"] for label, e in m["per_class"].items()},
            "cpms": {"pooled": m["cpm"], **{label: e["cpm"] for label, e in m["per_class"].items()}},
        }
        return [Figure("froc", "froc.png", args)]

    def summary(self, result: Mapping[str, Any]) -> list[str | ReportTable]:
        m = result["metrics"]
        ci_pct = f"{m['ci']:.0%}"

        def cell(entry: Mapping[str, Any], name: str) -> str:
            value, ci = entry.get(name), entry.get(f"{name}_ci")
            return f"{fmt(value)} [{fmt(ci[0])}-{fmt(ci[1])}]" if value is not None and ci else fmt(value)

        names = ("ap50", "map", "cpm", "image_auroc")
        rows = [[label, str(e["truths"]), *(cell(e, n) for n in names)] for label, e in m["per_class"].items()]
        columns = ["label", "true boxes", f"AP50 [{ci_pct} CI]", "mAP@[.5:.95]", "FROC CPM", "image AUROC"]
        title = f"boxes at score >= {result['score_threshold']:g}, NMS IoU {result['nms_iou']:g}"
        return [ReportTable(columns, [rows, [["mean", "", *(cell(m, n) for n in names)]]], title=title)]

    # -- serving ------------------------------------------------------------------------------

    def encode(
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float | None], unit: str | None
    ) -> Prediction:
        """Kept boxes ``(m, 6)`` already in the input's original coordinates (the runtime maps them) as the answer."""
        rows = np.asarray(scores, dtype=np.float64).reshape(-1, 6)
        boxes = [
            {"label": labels[int(r[4])], "score": round(float(r[5]), 6), "box": [round(float(v), 2) for v in r[:4]]}
            for r in rows
        ]
        return Prediction(boxes=boxes)

    def validate_feedback(
        self, outputs: Mapping[str, Any], labels: Mapping[str, Any] | None, value: float | None
    ) -> None:
        """A reader says per label whether the image shows it (1/0), or sends the corrected boxes:
        ``labels = {"boxes": [{"label", "box": [x0, y0, x1, y1]}, ...]}`` in the input's original pixels
        (an empty list: no finding), checked by :meth:`check_boxes`.

        The labels a box may have are the answer's ``labels`` where it records them, else the labels of its
        served boxes; the image's bounds are checked where the answer records its ``size`` ``[h, w]``.
        """
        if value is not None:
            raise InvalidFeedbackError("a detection answer is corrected per label or by boxes; send 'labels'.")
        if not labels:
            raise InvalidFeedbackError("send per-label 'labels' ({label: 0 or 1}) or corrected 'boxes'.")
        if "boxes" in labels:
            if set(labels) != {"boxes"}:
                raise InvalidFeedbackError(
                    f"labels.boxes comes alone; got labels with keys {sorted(labels)} (send per-label 0/1 apart)."
                )
            known = list(outputs.get("labels") or dict.fromkeys(b["label"] for b in outputs.get("boxes") or []))
            size = outputs.get("size")
            self.check_boxes(labels["boxes"], known, None if size is None else (int(size[0]), int(size[1])))
            return
        bad = {k: v for k, v in labels.items() if v not in (0, 1)}
        if bad:
            raise InvalidFeedbackError(f"labels must be 0 or 1, got {bad}.")

    def check_boxes(
        self, boxes: Any, labels: Sequence[str], size: tuple[int, int] | None = None
    ) -> list[dict[str, Any]]:
        """Corrected boxes ``[{"label", "box": [x0, y0, x1, y1]}]`` (original pixels) checked; the list normalised.

        ``size`` (height, width): the boxes must lie on the image. Raises :class:`InvalidFeedbackError` naming
        the entry and field (``labels.boxes[i].label`` / ``.box``) that is wrong.
        """
        if not isinstance(boxes, list):
            raise InvalidFeedbackError(f"labels.boxes must be a list of {{label, box}}, got {type(boxes).__name__}.")
        out = []
        for i, entry in enumerate(boxes):
            field = f"labels.boxes[{i}]"
            if not isinstance(entry, Mapping) or "label" not in entry or "box" not in entry:
                raise InvalidFeedbackError(f"{field} must be an object with 'label' and 'box'.")
            if entry["label"] not in labels:
                hint = did_you_mean(str(entry["label"]), labels)
                raise InvalidFeedbackError(f"{field}.label {entry['label']!r} is not one of {list(labels)}.{hint}")
            box = entry["box"]
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
            ):
                raise InvalidFeedbackError(f"{field}.box must be four numbers [x0, y0, x1, y1], got {box!r}.")
            if not (box[2] > box[0] and box[3] > box[1]) or min(box) < 0:
                raise InvalidFeedbackError(f"{field}.box {box} needs x1 > x0 >= 0 and y1 > y0 >= 0.")
            if size is not None and (box[2] > size[1] or box[3] > size[0]):
                raise InvalidFeedbackError(
                    f"{field}.box {box} reaches outside the {size[1]} x {size[0]} image (width x height)."
                )
            out.append({"label": entry["label"], "box": [float(v) for v in box]})
        return out

    def drift_features(self, labels: Sequence[str]) -> list[str]:
        """Boxes per image and top score per label (:func:`detection_features`)."""
        return [f"boxes:{label}" for label in labels] + [f"top_score:{label}" for label in labels]
