"""Detection statistics as pure array functions: COCO AP, FROC, image-level AUROC, reader agreement, paired mAP.

Boxes are NumPy arrays per image: truths ``(n, 5)`` ``[x0, y0, x1, y1, label_index]``, predictions
``(m, 6)`` ``[x0, y0, x1, y1, label_index, score]``, corners in pixels at any one scale.

* :func:`average_precision` is COCO's (``pycocotools.cocoeval.COCOeval``, bbox, area "all",
  ``maxDets`` 100): per image and class the predictions are taken by descending score and each
  matches the unmatched truth it overlaps most at IoU >= the threshold (one truth per prediction,
  the rest are false positives); per class, the precision of the pooled ranking is made monotone
  and read at 101 recall points. A class with no truth has no AP and is left out of the means.
* :func:`froc` follows LUNA16 and CAMELYON16: a truth is found at a score threshold when a
  prediction of its class that hits it (IoU >= ``iou_threshold``, or the prediction's centre inside
  the truth) scores at least that; a prediction that hits no truth is a false positive, one that
  hits an already-found truth is not. The sensitivity at a rate is that of the most permissive
  operating point whose false positives per image do not exceed it; CPM is the mean over the rates.
* :func:`image_auroc` scores an image for a class by its top box of that class (0 with none).
* :func:`reader_agreement` is the pairwise F1 of readers' boxes on the images several read: the
  ceiling a detector's agreement with one reader can be judged against.

Matching happens within an image, so it does not change when images are resampled: the patient
bootstrap of :func:`detection_metrics` (and the paired one of :func:`paired_map_difference`) match
once and reweight the matched predictions by each resample's image counts. A patient drawn twice
weighs its predictions twice, which gives the same precision-recall curve as copying the images
(the copies' predictions are adjacent in the ranking and the monotone envelope hides the points between them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from radflow.metrics.bootstrap import bootstrap_weights, json_float, percentile_ci, weighted_auroc

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "FROC_FP_RATES",
    "average_precision",
    "box_iou",
    "detection_metrics",
    "froc",
    "headline",
    "image_auroc",
    "paired_map_difference",
    "reader_agreement",
]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""IoU thresholds of COCO's mAP@[.5:.95] (``np.arange(0.5, 0.96, 0.05)`` without its rounding)."""
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per image at which LUNA16's CPM reads the sensitivity."""
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# Cells per bootstrap block (resamples x predictions): bounds memory on large splits.
_BLOCK_CELLS = 2_000_000

HitCriterion = Literal["iou", "center"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` ``(n, 4+)`` with every box of ``b`` ``(m, 4+)``: ``(n, m)``.

    The one box IoU in radflow (box fusion, NMS, matching, online metrics); a single box may be given as ``(4,)``.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))[:, :4]
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))[:, :4]
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return out


def _check_boxes(boxes: Sequence[np.ndarray], columns: int, what: str, label_count: int | None) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i, raw in enumerate(boxes):
        arr = np.asarray(raw, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, columns)
        if arr.ndim != 2 or arr.shape[1] != columns:
            raise ValueError(f"{what} of image {i} must be ({columns},)-wide rows, got shape {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} of image {i} hold a non-finite value.")
        bad = np.flatnonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))
        if bad.size:
            raise ValueError(
                f"{what} of image {i}, row {int(bad[0])}: x1 < x0 or y1 < y0 ({arr[bad[0], :4].tolist()})."
            )
        lab = arr[:, 4]
        if label_count is not None and np.any((lab < 0) | (lab >= label_count) | (lab != np.round(lab))):
            row = int(np.flatnonzero((lab < 0) | (lab >= label_count) | (lab != np.round(lab)))[0])
            raise ValueError(
                f"{what} of image {i}, row {row}: label index {lab[row]:g} is not one of 0..{label_count - 1}."
            )
        out.append(arr)
    return out


def _checked(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], label_count: int | None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} images of predictions for {len(truths)} images of truths.")
    return _check_boxes(preds, 6, "predictions", label_count), _check_boxes(truths, 5, "truths", label_count)


def _label_count(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> int:
    tops = [int(b[:, 4].max()) + 1 for b in (*preds, *truths) if len(b)]
    return max(tops, default=0)


# -- COCO average precision ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Matched:
    """The predictions of one class, ranked as COCO ranks them, with their match at each IoU threshold."""

    image: np.ndarray
    """``(d,)`` the image of each ranked prediction."""
    tp: np.ndarray
    """``(T, d)`` 1 where the prediction matched a truth at threshold ``t``, else 0 (a false positive)."""
    truth_images: np.ndarray
    """``(g,)`` the image of each truth of the class."""


def _match_image(pred: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """COCOeval.evaluateImg's greedy matching: ``(T, d)`` matched flags of score-sorted ``pred``."""
    tp = np.zeros((thresholds.size, len(pred)))
    if not len(pred) or not len(truth):
        return tp
    ious = box_iou(pred, truth)
    for t, threshold in enumerate(thresholds):
        taken = np.zeros(len(truth), dtype=bool)
        floor = min(float(threshold), 1 - 1e-10)
        for d in range(len(pred)):
            row = np.where(taken | (ious[d] < floor), -1.0, ious[d])
            if row.max() < 0:
                continue
            # COCO keeps the last truth among equal best overlaps (it replaces on >=).
            g = len(row) - 1 - int(np.argmax(row[::-1]))
            taken[g] = True
            tp[t, d] = 1.0
    return tp


def _match(
    preds: list[np.ndarray], truths: list[np.ndarray], label_count: int, thresholds: np.ndarray, max_detections: int
) -> list[_Matched]:
    out = []
    for k in range(label_count):
        images, flags, scores, truth_images = [], [], [], []
        for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
            p = pred[pred[:, 4] == k]
            t = truth[truth[:, 4] == k]
            truth_images.append(np.full(len(t), i))
            p = p[np.argsort(-p[:, 5], kind="mergesort")][:max_detections]
            images.append(np.full(len(p), i))
            scores.append(p[:, 5])
            flags.append(_match_image(p, t, thresholds))
        score = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-score, kind="mergesort")
        tp = np.concatenate(flags, axis=1) if flags else np.zeros((thresholds.size, 0))
        image = np.concatenate(images).astype(np.int64) if images else np.zeros(0, np.int64)
        truth_image = np.concatenate(truth_images).astype(np.int64) if truth_images else np.zeros(0, np.int64)
        out.append(_Matched(image=image[order], tp=tp[:, order], truth_images=truth_image))
    return out


def _weighted_ap(matched: _Matched, weights: np.ndarray) -> np.ndarray:
    """AP ``(B, T)`` of one class under image weights ``(B, n)``; NaN where the class has no (weighted) truth.

    COCOeval.accumulate: cumulative TP/FP, precision made non-increasing from the right, read at
    the 101 recall points (a point beyond the largest recall reads 0). A recall point ``r`` reads the
    first prediction whose recall reaches ``r``, so prediction ``i`` serves the points in
    ``(recall[i-1], recall[i]]``, found with the same comparisons COCO's ``searchsorted`` makes.
    """
    b, t = weights.shape[0], matched.tp.shape[0]
    positives = weights[:, matched.truth_images].sum(axis=1)
    ap = np.full((b, t), np.nan)
    has = positives > 0
    if not has.any():
        return ap
    ap[has] = 0.0
    if not matched.image.size:
        return ap
    w = weights[has][:, matched.image]
    pos = positives[has][:, None]
    for ti in range(t):
        tp_sum = np.cumsum(w * matched.tp[ti], axis=1)
        fp_sum = np.cumsum(w * (1.0 - matched.tp[ti]), axis=1)
        recall = tp_sum / pos
        precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        reached = np.searchsorted(_RECALL_POINTS, recall.ravel(), side="right").reshape(recall.shape)
        served = np.diff(reached, axis=1, prepend=0)
        ap[has, ti] = (envelope * served).sum(axis=1) / _RECALL_POINTS.size
    return ap


def _ap_blocks(matched: list[_Matched], weights: np.ndarray) -> np.ndarray:
    """AP ``(B, K, T)`` under image weights ``(B, n)``, in row blocks small enough for memory."""
    detections = max(1, max((m.image.size for m in matched), default=1))
    rows = max(1, _BLOCK_CELLS // detections)
    out = np.empty((weights.shape[0], len(matched), matched[0].tp.shape[0] if matched else 0))
    for start in range(0, weights.shape[0], rows):
        block = weights[start : start + rows]
        for k, m in enumerate(matched):
            out[start : start + rows, k] = _weighted_ap(m, block)
    return out


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = np.where(finite, values, 0.0).sum(axis=axis) / finite.sum(axis=axis)
    return out


def _threshold_index(thresholds: np.ndarray, value: float) -> int | None:
    hits = np.flatnonzero(np.isclose(thresholds, value))
    return int(hits[0]) if hits.size else None


def _ap_summary(ap: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray | None]:
    """mAP@thresholds, AP50 and AP75 means over classes from AP ``(B, K, T)``: each ``(B,)``."""
    i50, i75 = _threshold_index(thresholds, 0.5), _threshold_index(thresholds, 0.75)
    return {
        "map": _nanmean(_nanmean(ap, axis=2), axis=1),
        "ap50": None if i50 is None else _nanmean(ap[:, :, i50], axis=1),
        "ap75": None if i75 is None else _nanmean(ap[:, :, i75], axis=1),
    }


def average_precision(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    label_count: int,
    iou_thresholds: np.ndarray | Sequence[float] = COCO_IOU_THRESHOLDS,
    *,
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO average precision per class and IoU threshold, and its means over the classes with a truth.

    ``max_detections``: the top predictions of each image and class that count (COCO's ``maxDets``).
    Returns ``{"iou_thresholds", "map", "ap50", "ap75", "classes", "per_class": [{"ap": [per
    threshold], "map", "ap50", "ap75", "truths", "predictions"}, ...]}`` (``per_class`` by label
    index); ``ap50``/``ap75`` are ``None`` when that threshold is not among ``iou_thresholds``,
    a class without truth has ``None`` throughout.
    """
    p, t = _checked(preds, truths, label_count)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    matched = _match(p, t, label_count, thresholds, max_detections)
    ap = _ap_blocks(matched, np.ones((1, len(p))))
    means = _ap_summary(ap, thresholds)
    per_class = []
    for k, m in enumerate(matched):
        row = _ap_summary(ap[:, k : k + 1], thresholds)
        per_class.append(
            {
                "ap": [json_float(v) for v in ap[0, k]],
                **{name: None if v is None else json_float(v[0]) for name, v in row.items()},
                "truths": int(m.truth_images.size),
                "predictions": int(m.image.size),
            }
        )
    return {
        "iou_thresholds": [json_float(v) for v in thresholds],
        **{name: None if v is None else json_float(v[0]) for name, v in means.items()},
        "classes": int(np.isfinite(ap[0, :, 0]).sum()) if thresholds.size else 0,
        "per_class": per_class,
    }


# -- FROC ------------------------------------------------------------------------------------------


def _hits(pred: np.ndarray, truth: np.ndarray, criterion: HitCriterion, iou_threshold: float) -> np.ndarray:
    """``(m, n)`` whether each prediction hits each truth (labels must agree)."""
    if criterion == "iou":
        hit = box_iou(pred, truth) >= iou_threshold
    else:
        cx, cy = (pred[:, 0] + pred[:, 2]) / 2, (pred[:, 1] + pred[:, 3]) / 2
        hit = (
            (cx[:, None] >= truth[None, :, 0])
            & (cx[:, None] <= truth[None, :, 2])
            & (cy[:, None] >= truth[None, :, 1])
            & (cy[:, None] <= truth[None, :, 3])
        )
    same: np.ndarray = hit & (pred[:, None, 4] == truth[None, :, 4])
    return same


@dataclass(frozen=True)
class _FrocEvents:
    """Per class, the scored events of a FROC: a truth found at its best hit's score, or a false positive."""

    score: np.ndarray
    """``(e,)`` descending."""
    image: np.ndarray
    found: np.ndarray
    """``(e,)`` True for a found truth, False for a false positive."""
    label: np.ndarray
    truth_images: np.ndarray
    truth_labels: np.ndarray


def _froc_events(preds: list[np.ndarray], truths: list[np.ndarray], criterion: HitCriterion, iou: float) -> _FrocEvents:
    scores, images, found, labels, truth_images, truth_labels = [], [], [], [], [], []
    for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        hit = (
            _hits(pred, truth, criterion, iou) if len(pred) and len(truth) else np.zeros((len(pred), len(truth)), bool)
        )
        fp = ~hit.any(axis=1)
        best = np.where(hit, pred[:, 5:6], -np.inf).max(axis=0) if len(pred) else np.full(len(truth), -np.inf)
        seen = np.isfinite(best)
        scores += [pred[fp, 5], best[seen]]
        images.append(np.full(int(fp.sum() + seen.sum()), i))
        found += [np.zeros(int(fp.sum()), bool), np.ones(int(seen.sum()), bool)]
        labels += [pred[fp, 4], truth[seen, 4]]
        truth_images.append(np.full(len(truth), i))
        truth_labels.append(truth[:, 4])
    score = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-score, kind="mergesort")
    return _FrocEvents(
        score=score[order],
        image=_joined(images, np.int64)[order],
        found=_joined(found, bool)[order],
        label=_joined(labels, np.int64)[order],
        truth_images=_joined(truth_images, np.int64),
        truth_labels=_joined(truth_labels, np.int64),
    )


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return (np.concatenate(parts) if parts else np.zeros(0)).astype(dtype)


def _weighted_froc(
    events: _FrocEvents, keep: np.ndarray, truth_keep: np.ndarray, weights: np.ndarray, rates: np.ndarray
) -> np.ndarray:
    """Sensitivity ``(B, R)`` at each rate under image weights ``(B, n)`` of the events ``keep`` selects.

    Operating points are the distinct scores (ties pass a threshold together) plus "nothing called";
    NaN where the selection holds no truth.
    """
    n_truth = weights[:, events.truth_images[truth_keep]].sum(axis=1)
    n_images = weights.sum(axis=1)
    out = np.full((weights.shape[0], rates.size), np.nan)
    has = n_truth > 0
    if not has.any():
        return out
    score = events.score[keep]
    w = weights[has][:, events.image[keep]]
    found = np.cumsum(w * events.found[keep], axis=1)
    false = np.cumsum(w * ~events.found[keep], axis=1)
    last = np.r_[score[1:] != score[:-1], True] if score.size else np.zeros(0, bool)
    found = np.concatenate([np.zeros((found.shape[0], 1)), found[:, last]], axis=1)
    false = np.concatenate([np.zeros((false.shape[0], 1)), false[:, last]], axis=1)
    for r, rate in enumerate(rates):
        # False positives only grow as the threshold falls: the points within the rate are a prefix.
        within = (false <= rate * n_images[has][:, None] + 1e-9).sum(axis=1) - 1
        out[has, r] = found[np.arange(found.shape[0]), within] / n_truth[has]
    return out


def _froc_all(events: _FrocEvents, label_count: int, weights: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Sensitivity ``(B, K + 1, R)``: each class, then all classes pooled."""
    out = np.empty((weights.shape[0], label_count + 1, rates.size))
    detections = max(1, events.score.size)
    rows = max(1, _BLOCK_CELLS // detections)
    for start in range(0, weights.shape[0], rows):
        block = weights[start : start + rows]
        for k in range(label_count):
            out[start : start + rows, k] = _weighted_froc(
                events, events.label == k, events.truth_labels == k, block, rates
            )
        every = np.ones(events.score.size, bool)
        out[start : start + rows, label_count] = _weighted_froc(
            events, every, np.ones(events.truth_images.size, bool), block, rates
        )
    return out


def _froc_entry(sens: np.ndarray, truths: int) -> dict[str, Any]:
    defined = bool(np.all(np.isfinite(sens)))
    return {
        "sensitivity": [json_float(v) for v in sens] if defined else None,
        "cpm": json_float(sens.mean()) if defined else None,
        "truths": truths,
    }


def froc(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    fp_rates: Sequence[float] = FROC_FP_RATES,
    iou_threshold: float = 0.5,
    *,
    hit: HitCriterion = "iou",
    label_count: int | None = None,
) -> dict[str, Any]:
    """Free-response ROC: sensitivity at each rate of false positives per image, per class and pooled.

    ``hit``: ``"iou"`` (a prediction hits a truth of its class at IoU >= ``iou_threshold``) or
    ``"center"`` (its centre lies inside the truth); ``label_count`` defaults to the largest label
    index seen plus one. Pooled, every class's truths count and a prediction hits only truths of
    its own class. Returns ``{"fp_rates", "hit", "images", "pooled": {"sensitivity", "cpm",
    "truths"}, "per_class": [{...}, ...]}``; ``None`` where there is no truth.
    """
    if hit not in ("iou", "center"):
        raise ValueError(f"hit must be 'iou' or 'center', got {hit!r}.")
    p, t = _checked(preds, truths, label_count)
    k = _label_count(p, t) if label_count is None else label_count
    rates = np.asarray(fp_rates, dtype=np.float64).reshape(-1)
    events = _froc_events(p, t, hit, iou_threshold)
    sens = _froc_all(events, k, np.ones((1, len(p))), rates)[0]
    return {
        "fp_rates": [json_float(r) for r in rates],
        "hit": "centre inside truth" if hit == "center" else f"IoU >= {iou_threshold:g}",
        "images": len(p),
        "pooled": _froc_entry(sens[k], int(events.truth_images.size)),
        "per_class": [_froc_entry(sens[j], int(np.sum(events.truth_labels == j))) for j in range(k)],
    }


# -- image-level AUROC ----------------------------------------------------------------------------


def _image_scores(preds: list[np.ndarray], truths: list[np.ndarray], label_count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, K)`` whether each image holds a truth of each class, and its top box score for the class (0 if none)."""
    y = np.zeros((len(truths), label_count))
    s = np.zeros((len(preds), label_count))
    for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        y[i, truth[:, 4].astype(np.int64)] = 1.0
        for k in np.unique(pred[:, 4]).astype(np.int64):
            s[i, k] = max(s[i, k], float(pred[pred[:, 4] == k, 5].max()))
    return y, s


def _weighted_image_auroc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B, K + 1)``: AUROC per class, then their mean over the classes with both kinds of image."""
    if not y.shape[0] or not y.shape[1]:
        return np.full((weights.shape[0], y.shape[1] + 1), np.nan)
    per = np.stack([weighted_auroc(y[:, k], s[:, k], weights) for k in range(y.shape[1])], axis=1)
    return np.concatenate([per, _nanmean(per, axis=1)[:, None]], axis=1)


def image_auroc(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], label_count: int) -> dict[str, Any]:
    """Image-level AUROC per class from the top box score (0 for an image with no box of the class).

    Returns ``{"macro", "per_class": [{"auroc", "positives", "negatives"}, ...]}``; ``None`` where
    the split lacks positive or negative images of a class.
    """
    p, t = _checked(preds, truths, label_count)
    y, s = _image_scores(p, t, label_count)
    auc = _weighted_image_auroc(y, s, np.ones((1, len(p))))[0]
    return {
        "macro": json_float(auc[-1]),
        "per_class": [
            {"auroc": json_float(auc[k]), "positives": int(y[:, k].sum()), "negatives": int((1 - y[:, k]).sum())}
            for k in range(label_count)
        ],
    }


# -- the report -----------------------------------------------------------------------------------


def _patient_index(patients: Sequence[str] | np.ndarray | None, n: int) -> np.ndarray:
    if patients is None:
        return np.arange(n)
    groups = np.asarray(patients).reshape(-1)
    if groups.shape != (n,):
        raise ValueError(f"patients has {groups.size} entries for {n} images.")
    _, index = np.unique(groups, return_inverse=True)
    return np.asarray(index.reshape(-1), dtype=np.int64)


def _image_weights(index: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Patient-level resamples as image weights ``(chunk, n)``: a drawn patient brings all its images."""
    n_patients = int(index.max()) + 1 if index.size else 0
    if not n_patients:
        return
    for counts in bootstrap_weights(n_patients, n_boot, seed):
        yield counts[:, index]


def _ci(samples: np.ndarray | None, point: float | None, ci: float) -> list[float | None] | None:
    return None if samples is None or point is None else percentile_ci(samples, ci)


def detection_metrics(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    labels: Sequence[str],
    patients: Sequence[str] | np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    iou_thresholds: np.ndarray | Sequence[float] = COCO_IOU_THRESHOLDS,
    fp_rates: Sequence[float] = FROC_FP_RATES,
    froc_iou: float = 0.5,
    hit: HitCriterion = "iou",
) -> dict[str, Any]:
    """The detection report of one split, JSON-ready, with patient-level bootstrap intervals.

    ``patients`` names each image's patient (the bootstrap unit; default: each image its own).
    Returns::

        {"n", "n_patients", "ci", "resamples", "iou_thresholds", "fp_rates", "froc_hit",
         "map", "map_ci", "ap50", "ap50_ci", "ap75", "ap75_ci",    # means over classes with a truth
         "cpm", "cpm_ci", "froc": [sensitivity per rate],           # pooled over classes
         "image_auroc", "image_auroc_ci",                           # mean over classes
         "per_class": {label: {"truths", "predictions", "images_with", "ap": [per IoU], "map", "map_ci",
                               "ap50", "ap50_ci", "ap75", "cpm", "cpm_ci", "froc", "image_auroc",
                               "image_auroc_ci"}}}

    A resample in which a class has no truth leaves it out of that resample's means (as the point
    estimate leaves out a class without truth).
    """
    k = len(labels)
    if not k:
        raise ValueError("labels is empty: a detection report needs the names of the box labels.")
    p, t = _checked(preds, truths, k)
    n = len(p)
    index = _patient_index(patients, n)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    rates = np.asarray(fp_rates, dtype=np.float64).reshape(-1)
    matched = _match(p, t, k, thresholds, 100)
    events = _froc_events(p, t, hit, froc_iou)
    y, s = _image_scores(p, t, k)

    def measure(weights: np.ndarray) -> dict[str, np.ndarray]:
        ap = _ap_blocks(matched, weights)
        summary = _ap_summary(ap, thresholds)
        sens = _froc_all(events, k, weights, rates)
        out = {"ap": ap, "sens": sens, "auroc": _weighted_image_auroc(y, s, weights)}
        out.update({name: v for name, v in summary.items() if v is not None})
        out["class_map"] = _nanmean(ap, axis=2)
        out["cpm"] = sens.mean(axis=2)
        return out

    point = measure(np.ones((1, n)))
    boot: dict[str, np.ndarray] | None = None
    if n_boot > 0 and n:
        parts = [measure(w) for w in _image_weights(index, n_boot, seed)]
        boot = {name: np.concatenate([part[name] for part in parts]) for name in point}

    def value(name: str, *at: int) -> float | None:
        return json_float(point[name][(0, *at)]) if name in point else None

    def interval(name: str, *at: int) -> list[float | None] | None:
        if boot is None or name not in boot:
            return None
        key: tuple[Any, ...] = (slice(None), *at)
        return _ci(boot[name][key], value(name, *at), ci)

    per_class: dict[str, Any] = {}
    i50, i75 = _threshold_index(thresholds, 0.5), _threshold_index(thresholds, 0.75)
    for j, label in enumerate(labels):
        sens = point["sens"][0, j]
        has_truth = bool(np.isfinite(sens).all())
        per_class[label] = {
            "truths": int(matched[j].truth_images.size),
            "predictions": int(matched[j].image.size),
            "images_with": int(y[:, j].sum()),
            "ap": [json_float(v) for v in point["ap"][0, j]],
            "map": value("class_map", j),
            "map_ci": interval("class_map", j),
            "ap50": None if i50 is None else json_float(point["ap"][0, j, i50]),
            "ap50_ci": None if i50 is None else interval("ap", j, i50),
            "ap75": None if i75 is None else json_float(point["ap"][0, j, i75]),
            "cpm": value("cpm", j),
            "cpm_ci": interval("cpm", j),
            "froc": [json_float(v) for v in sens] if has_truth else None,
            "image_auroc": value("auroc", j),
            "image_auroc_ci": interval("auroc", j),
        }
    pooled = point["sens"][0, k]
    return {
        "n": n,
        "n_patients": int(index.max()) + 1 if n else 0,
        "ci": ci,
        "resamples": n_boot if boot is not None else 0,
        "iou_thresholds": [json_float(v) for v in thresholds],
        "fp_rates": [json_float(r) for r in rates],
        "froc_hit": "centre inside truth" if hit == "center" else f"IoU >= {froc_iou:g}",
        "map": value("map"),
        "map_ci": interval("map"),
        "ap50": value("ap50"),
        "ap50_ci": interval("ap50"),
        "ap75": value("ap75"),
        "ap75_ci": interval("ap75"),
        "cpm": value("cpm", k),
        "cpm_ci": interval("cpm", k),
        "froc": [json_float(v) for v in pooled] if np.isfinite(pooled).all() else None,
        "image_auroc": value("auroc", k),
        "image_auroc_ci": interval("auroc", k),
        "per_class": per_class,
    }


def headline(report: dict[str, Any]) -> dict[str, float | None]:
    """The flat headline numbers of :func:`detection_metrics`, unprefixed; logged as ``test_<name>``.

    The registry gates read ``test_map50`` (``gates.min_map50``, ``gates.max_map_drop``) and
    ``test_froc_cpm`` (``gates.min_froc``).
    """
    return {
        "map50": report["ap50"],
        "map": report["map"],
        "map75": report["ap75"],
        "froc_cpm": report["cpm"],
        "image_auroc": report["image_auroc"],
    }


# -- the champion comparison --------------------------------------------------------------------


def paired_map_difference(
    preds_a: Sequence[np.ndarray],
    preds_b: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    patients: Sequence[str] | np.ndarray | None,
    label_count: int | None = None,
    *,
    metric: Literal["ap50", "map"] = "ap50",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    iou_thresholds: np.ndarray | Sequence[float] = COCO_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """mAP of ``preds_b`` minus mAP of ``preds_a`` on the same images, with a paired patient-level bootstrap.

    ``metric``: ``"ap50"`` (the mean over classes of AP at IoU 0.5) or ``"map"`` (mAP@[.5:.95]).
    Each resample draws patients once and scores both models on the drawn images (as
    :func:`radflow.metrics.paired.paired_bootstrap_auroc` does for AUROC). Returns ``{"method",
    "metric", "n", "n_patients", "map_a", "map_b", "diff", "ci", "p_value", "resamples"}``;
    ``None`` estimates when no class has a truth.
    """
    from radflow.metrics.paired import bootstrap_difference

    if metric not in ("ap50", "map"):
        raise ValueError(f"metric must be 'ap50' or 'map', got {metric!r}.")
    if len(preds_a) != len(preds_b):
        raise ValueError(f"{len(preds_a)} images of predictions a for {len(preds_b)} of predictions b.")
    a, t = _checked(preds_a, truths, label_count)
    b, _ = _checked(preds_b, truths, label_count)
    k = _label_count(a + b, t) if label_count is None else label_count
    n = len(t)
    index = _patient_index(patients, n)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if metric == "ap50":
        i50 = _threshold_index(thresholds, 0.5)
        thresholds = np.array([0.5]) if i50 is None else thresholds[i50 : i50 + 1]
    matched_a = _match(a, t, k, thresholds, 100)
    matched_b = _match(b, t, k, thresholds, 100)

    def both(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Over the classes with a truth, the mean over the thresholds kept (0.5 alone for ap50).
        ap_a, ap_b = _ap_blocks(matched_a, weights), _ap_blocks(matched_b, weights)
        return _nanmean(_nanmean(ap_a, axis=2), axis=1), _nanmean(_nanmean(ap_b, axis=2), axis=1)

    map_a, map_b = (float(v[0]) for v in both(np.ones((1, n))))
    out: dict[str, Any] = {
        "method": "paired bootstrap over patients",
        "metric": metric,
        "n": n,
        "n_patients": int(index.max()) + 1 if n else 0,
        "map_a": json_float(map_a),
        "map_b": json_float(map_b),
        "diff": json_float(map_b - map_a),
        "ci": None,
        "p_value": None,
        "resamples": 0,
    }
    if out["diff"] is None or n_boot <= 0:
        return out
    diffs = [mb - ma for ma, mb in (both(w) for w in _image_weights(index, n_boot, seed))]
    out.update(bootstrap_difference(np.concatenate(diffs), ci))
    return out


# -- inter-reader agreement ---------------------------------------------------------------------


def _pair_matches(a: np.ndarray, b: np.ndarray, iou: float, label_count: int) -> np.ndarray:
    """Matched boxes per class ``(K,)`` between two readers: same class, IoU >= ``iou``, largest overlaps first."""
    out = np.zeros(label_count, dtype=np.int64)
    if not len(a) or not len(b):
        return out
    ious = box_iou(a, b)
    ious[a[:, None, 4] != b[None, :, 4]] = -1.0
    ia, ib = np.nonzero(ious >= iou)
    order = np.argsort(-ious[ia, ib], kind="mergesort")
    used_a, used_b = set(), set()
    for i, j in zip(ia[order], ib[order], strict=True):
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        out[int(a[i, 4])] += 1
    return out


def _f1(matched: float, boxes: float) -> float | None:
    return json_float(2.0 * matched / boxes) if boxes else None


def reader_agreement(
    reader_boxes: Sequence[Sequence[np.ndarray]],
    *,
    readers: Sequence[Sequence[str]] | None = None,
    labels: Sequence[str] | None = None,
    iou: float = 0.5,
) -> dict[str, Any]:
    """How far the readers of the same images agree: pairwise F1 of their box matches.

    ``reader_boxes[i]`` holds each reader's ``(n, 5)`` truths of image ``i``; ``readers[i]`` names
    them (default: by position, ``reader0``, ``reader1``...), ``labels`` names the label indices.
    Two readers' boxes match one to one when of one class and overlapping by IoU >= ``iou`` (largest
    overlaps first); a pair's F1 is ``2 * matched / (boxes of a + boxes of b)`` summed over the images
    both read, so images where neither drew a box add nothing. Images with one reader are skipped
    and counted. Returns ``{"iou", "images", "skipped_single_reader", "f1" (all pairs pooled),
    "mean_pair_f1", "pairs": {"a|b": {"images", "matched", "boxes_a", "boxes_b", "f1"}},
    "per_class": {label: {"matched", "boxes", "f1"}}}``.
    """
    if readers is not None and len(readers) != len(reader_boxes):
        raise ValueError(f"readers names {len(readers)} images for {len(reader_boxes)} images of boxes.")
    images = []
    for i, per_reader in enumerate(reader_boxes):
        names = [f"reader{r}" for r in range(len(per_reader))] if readers is None else [str(r) for r in readers[i]]
        if len(names) != len(per_reader):
            raise ValueError(f"image {i}: {len(names)} reader names for {len(per_reader)} readers' boxes.")
        if len(set(names)) != len(names):
            raise ValueError(f"image {i}: a reader appears twice ({names}).")
        boxes = _check_boxes(per_reader, 5, f"reader boxes of image {i}", None)
        images.append((names, boxes))
    k = max(len(labels) if labels is not None else 0, _label_count([], [b for _, bs in images for b in bs]))
    names_k = list(labels) if labels is not None else [str(j) for j in range(k)]
    pairs: dict[str, dict[str, Any]] = {}
    class_matched = np.zeros(k, dtype=np.int64)
    class_boxes = np.zeros(k, dtype=np.int64)
    skipped = multi = 0
    for names, boxes in images:
        if len(boxes) < 2:
            skipped += 1
            continue
        multi += 1
        ranked = sorted(range(len(names)), key=lambda r: names[r])
        for x, ra in enumerate(ranked):
            for rb in ranked[x + 1 :]:
                a, b = boxes[ra], boxes[rb]
                matched = _pair_matches(a, b, iou, k)
                pair = pairs.setdefault(
                    f"{names[ra]}|{names[rb]}", {"images": 0, "matched": 0, "boxes_a": 0, "boxes_b": 0}
                )
                pair["images"] += 1
                pair["matched"] += int(matched.sum())
                pair["boxes_a"] += len(a)
                pair["boxes_b"] += len(b)
                class_matched += matched
                class_boxes += np.bincount(np.r_[a[:, 4], b[:, 4]].astype(np.int64), minlength=k)
    for pair in pairs.values():
        pair["f1"] = _f1(pair["matched"], pair["boxes_a"] + pair["boxes_b"])
    pair_f1 = [p["f1"] for p in pairs.values() if p["f1"] is not None]
    return {
        "iou": iou,
        "images": multi,
        "skipped_single_reader": skipped,
        "f1": _f1(float(class_matched.sum()), float(class_boxes.sum())),
        "mean_pair_f1": json_float(np.mean(pair_f1)) if pair_f1 else None,
        "pairs": dict(sorted(pairs.items())),
        "per_class": {
            names_k[j]: {
                "matched": int(class_matched[j]),
                "boxes": int(class_boxes[j]),
                "f1": _f1(class_matched[j], class_boxes[j]),
            }
            for j in range(k)
        },
    }
