"""Segmentation metrics as pure array functions: overlap, surface distances and lesion detection per structure.

Per image and structure :func:`image_metrics` measures Dice, IoU, the 95th-percentile Hausdorff
distance (HD95) and the mean surface distance (MSD); :func:`segmentation_report` averages them over a
split with percentile-bootstrap intervals that resample *patients* (all images of a drawn patient
come together, as in :mod:`~radflow.metrics.paired`), adds image- and lesion-level detection for
lesion-type structures, and breaks the averages down by subgroup.

Definitions follow MONAI (``DiceMetric``, ``HausdorffDistanceMetric``,
``SurfaceDistanceMetric(symmetric=True)``) and nnU-Net:

* A surface is the mask minus its erosion (4-connected), as MONAI's ``get_mask_edges``; distances
  are Euclidean between surface pixels (``scipy.ndimage.distance_transform_edt``), in mm when a
  pixel spacing is given for each image, else in pixels.
* HD95 is the larger of the two directed 95th percentiles (prediction to truth, truth to
  prediction); MSD is the mean of both directions' distances taken together.
* Both masks empty: Dice and IoU are undefined (NaN) and the image is left out of their mean, as
  nnU-Net does; an empty truth with a non-empty prediction scores Dice 0, so false positives count.
  The image-level specificity of lesion structures is what measures agreement on empty images.
* Surface distances need both surfaces: images where either mask is empty are left out of the
  distance means (MONAI answers NaN/inf there). Those with exactly one empty mask are counted as
  ``distance_undefined``; their failure shows in Dice (0).
* Lesions are 8-connected components of the truth mask; a lesion is found when any predicted pixel
  overlaps it. A predicted component overlapping no true lesion is a false-positive lesion.
  "Any lesion" calls an image positive when its mask has any pixel.

Means over a split are over the images where the metric is defined; the macro average is the mean
over structures of those means. A resample in which a structure has no defined image is skipped for
that structure (and for the macro average). Like the other metrics here, nothing raises on data
that leaves a metric undefined: the value is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from radflow.metrics.bootstrap import bootstrap_weights, json_float, percentile_ci

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DISTANCE_METRICS", "OVERLAP_METRICS", "ImageMetrics", "image_metrics", "segmentation_report"]

OVERLAP_METRICS = ("dice", "iou")
DISTANCE_METRICS = ("hd95", "msd")
_METRICS = OVERLAP_METRICS + DISTANCE_METRICS
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ImageMetrics:
    """Per-image, per-structure values ``(n, K)`` of one split; NaN where a metric is undefined (module docstring)."""

    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    msd: np.ndarray
    truth_any: np.ndarray
    """Whether the truth mask has any pixel."""
    pred_any: np.ndarray
    """Whether the predicted mask has any pixel."""
    lesions: np.ndarray
    """True lesions (connected components) per image; counted only for lesion structures, else 0."""
    lesions_found: np.ndarray
    """True lesions overlapped by the prediction."""
    false_lesions: np.ndarray
    """Predicted components overlapping no true lesion."""

    def metric(self, name: str) -> np.ndarray:
        """One of :data:`OVERLAP_METRICS` or :data:`DISTANCE_METRICS` by name."""
        values: np.ndarray = getattr(self, name)
        return values


def _check_masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred).astype(bool, copy=False), np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape or pred.ndim != 4:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must both be (n, K, H, W) masks.")
    return pred, truth


def _check_spacing(spacing: np.ndarray | Sequence[float] | None, n: int) -> np.ndarray | None:
    """Spacing per image as ``(n, 2)`` mm (row, column); an ``(n,)`` spacing is isotropic."""
    if spacing is None:
        return None
    out = np.asarray(spacing, dtype=np.float64)
    if out.ndim == 1:
        out = np.repeat(out[:, None], 2, axis=1)
    if out.shape != (n, 2):
        raise ValueError(f"spacing must be (n,) or (n, 2) mm for the {n} images, got shape {out.shape}.")
    bad = np.flatnonzero(~np.all(np.isfinite(out) & (out > 0), axis=1))
    if bad.size:
        raise ValueError(
            f"spacing of image {int(bad[0])} is {out[bad[0]].tolist()}; every image needs a positive spacing "
            "(pass spacing=None to measure distances in pixels)."
        )
    return out


def _surface_distances(
    pred: np.ndarray, truth: np.ndarray, sampling: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each predicted surface pixel to the truth surface, and from each truth surface pixel back.

    Both masks are non-empty. The work is cropped to their joint bounding box plus a one-pixel
    margin: every surface pixel lies inside it, so the distances are the same as on the full image.
    """
    rows = np.flatnonzero(pred.any(axis=1) | truth.any(axis=1))
    cols = np.flatnonzero(pred.any(axis=0) | truth.any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, pred.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, pred.shape[1])
    p, t = pred[r0:r1, c0:c1], truth[r0:r1, c0:c1]
    edge_p = p & ~ndimage.binary_erosion(p)
    edge_t = t & ~ndimage.binary_erosion(t)
    to_truth = ndimage.distance_transform_edt(~edge_t, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~edge_p, sampling=sampling)
    return np.asarray(to_truth[edge_p]), np.asarray(to_pred[edge_t])


def _lesion_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(true lesions, of them found, predicted components overlapping no true lesion) of one image."""
    truth_lab, n_truth = ndimage.label(truth, structure=_EIGHT_CONNECTED)
    pred_lab, n_pred = ndimage.label(pred, structure=_EIGHT_CONNECTED)
    found = np.unique(truth_lab[pred])
    hit = np.unique(pred_lab[truth])
    return int(n_truth), int(np.count_nonzero(found)), int(n_pred - np.count_nonzero(hit))


def image_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: np.ndarray | Sequence[float] | None = None,
    lesion: Sequence[bool] | None = None,
) -> ImageMetrics:
    """Dice, IoU, HD95, MSD and lesion counts of each image and structure.

    ``pred`` and ``truth`` are boolean ``(n, K, H, W)``; ``spacing`` is the size of a mask pixel in
    mm per image, ``(n, 2)`` (row, column) or ``(n,)``; ``lesion[k]`` says whether structure ``k``
    is lesion-type (its components are counted). The worst-cases gallery ranks images by these.
    """
    pred, truth = _check_masks(pred, truth)
    n, k = pred.shape[:2]
    mm = _check_spacing(spacing, n)
    lesion_flags = [False] * k if lesion is None else [bool(x) for x in lesion]
    if len(lesion_flags) != k:
        raise ValueError(f"lesion flags {len(lesion_flags)} do not match the {k} structures.")
    inter = np.logical_and(pred, truth).sum(axis=(2, 3), dtype=np.float64)
    size_p = pred.sum(axis=(2, 3), dtype=np.float64)
    size_t = truth.sum(axis=(2, 3), dtype=np.float64)
    union = size_p + size_t - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * inter / (size_p + size_t)
        iou = inter / union
    hd95 = np.full((n, k), np.nan)
    msd = np.full((n, k), np.nan)
    counts = np.zeros((3, n, k), dtype=np.int64)
    for i in range(n):
        sampling = (1.0, 1.0) if mm is None else (float(mm[i, 0]), float(mm[i, 1]))
        for j in range(k):
            if size_p[i, j] and size_t[i, j]:
                d_pt, d_tp = _surface_distances(pred[i, j], truth[i, j], sampling)
                hd95[i, j] = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
                msd[i, j] = np.concatenate([d_pt, d_tp]).mean()
            if lesion_flags[j]:
                counts[:, i, j] = _lesion_counts(pred[i, j], truth[i, j])
    return ImageMetrics(
        dice=dice,
        iou=iou,
        hd95=hd95,
        msd=msd,
        truth_any=size_t > 0,
        pred_any=size_p > 0,
        lesions=counts[0],
        lesions_found=counts[1],
        false_lesions=counts[2],
    )


def _ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted ``sum(num) / sum(den)`` per row of ``weights`` ``(B, n)`` and column: ``(B, R)``, NaN where 0/0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = (weights @ num) / (weights @ den)
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass(frozen=True)
class _Ratios:
    """The split-level statistics as ratios of per-image sums: a mean is sum(value) / count(defined)."""

    names: list[str]
    num: np.ndarray
    """``(n, R)`` numerators, one column per (statistic, structure)."""
    den: np.ndarray

    def point(self) -> np.ndarray:
        return _ratio(self.num, self.den, np.ones((1, self.num.shape[0])))[0]


def _ratios(scores: ImageMetrics, lesion: Sequence[bool]) -> _Ratios:
    names: list[str] = []
    nums: list[np.ndarray] = []
    dens: list[np.ndarray] = []
    k = scores.dice.shape[1]
    for metric in _METRICS:
        values = scores.metric(metric)
        defined = np.isfinite(values)
        for j in range(k):
            names.append(f"{metric}:{j}")
            nums.append(np.where(defined[:, j], values[:, j], 0.0))
            dens.append(defined[:, j].astype(np.float64))
    for j in range(k):
        if not lesion[j]:
            continue
        t, p = scores.truth_any[:, j], scores.pred_any[:, j]
        for name, num, den in (
            ("sensitivity", t & p, t),
            ("specificity", ~t & ~p, ~t),
            ("lesion_recall", scores.lesions_found[:, j], scores.lesions[:, j]),
        ):
            names.append(f"{name}:{j}")
            nums.append(num.astype(np.float64))
            dens.append(den.astype(np.float64))
    return _Ratios(names, np.stack(nums, axis=1), np.stack(dens, axis=1))


def _bootstrap(ratios: _Ratios, index: np.ndarray, k: int, n_bootstrap: int, seed: int) -> tuple[np.ndarray, ...]:
    """Resampled ratios ``(B, R)`` and macro means ``(B, metric)``; patients drawn by :func:`bootstrap_weights`."""
    n_patients = int(index.max()) + 1
    boot = np.empty((n_bootstrap, len(ratios.names)))
    row = 0
    for counts in bootstrap_weights(n_patients, n_bootstrap, seed):
        # A patient's draw count weighs each of its images: the images of a patient travel together.
        boot[row : row + len(counts)] = _ratio(ratios.num, ratios.den, counts[:, index])
        row += len(counts)
    point = ratios.point()
    macro = np.full((n_bootstrap, len(_METRICS)), np.nan)
    for m in range(len(_METRICS)):
        cols = [m * k + j for j in range(k) if np.isfinite(point[m * k + j])]
        if cols:
            macro[:, m] = boot[:, cols].mean(axis=1)
    return boot, macro


def _structure_entry(
    scores: ImageMetrics, j: int, point: np.ndarray, boot: np.ndarray | None, ratios: _Ratios, ci: float, unit: str
) -> dict[str, Any]:
    def stat(name: str) -> tuple[float | None, list[float | None] | None]:
        col = ratios.names.index(f"{name}:{j}")
        value = json_float(point[col])
        return value, (percentile_ci(boot[:, col], ci) if boot is not None and value is not None else None)

    t, p = scores.truth_any[:, j], scores.pred_any[:, j]
    entry: dict[str, Any] = {
        "n": int(t.size),
        "truth_present": int(t.sum()),
        "pred_present": int(p.sum()),
        "unit": unit,
    }
    for metric in _METRICS:
        entry[metric], entry[f"{metric}_ci"] = stat(metric)
    entry["dice_n"] = int(np.isfinite(scores.dice[:, j]).sum())
    entry["distance_n"] = int(np.isfinite(scores.hd95[:, j]).sum())
    entry["distance_undefined"] = int((t ^ p).sum())
    if f"sensitivity:{j}" in ratios.names:
        lesion: dict[str, Any] = {
            "images_with_lesion": int(t.sum()),
            "images_without_lesion": int((~t).sum()),
            "lesions": int(scores.lesions[:, j].sum()),
            "lesions_found": int(scores.lesions_found[:, j].sum()),
            "false_positive_lesions": int(scores.false_lesions[:, j].sum()),
        }
        for name in ("sensitivity", "specificity", "lesion_recall"):
            lesion[name], lesion[f"{name}_ci"] = stat(name)
        entry["lesion"] = lesion
    return entry


def _subgroups(
    scores: ImageMetrics, structures: Sequence[str], manifest: pd.DataFrame, age_bands: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """Mean Dice/IoU/HD95/MSD per structure by the classifiers' subgroup columns (sex, age band, projection)."""
    from radflow.metrics.subgroups import band_names, subgroup_columns

    out: dict[str, dict[str, Any]] = {}
    for grouping, values in subgroup_columns(manifest.reset_index(drop=True), age_bands).items():
        order = band_names(age_bands) if grouping == "age_band" else sorted(set(values) - {""})
        groups: dict[str, Any] = {}
        for value in order:
            rows = values == value
            if not rows.any():
                continue
            per_structure: dict[str, Any] = {}
            for j, name in enumerate(structures):
                per_structure[name] = {"n": int(rows.sum())}
                for metric in _METRICS:
                    column = scores.metric(metric)[rows, j]
                    defined = column[np.isfinite(column)]
                    per_structure[name][metric] = json_float(defined.mean()) if defined.size else None
            dices = [e["dice"] for e in per_structure.values() if e["dice"] is not None]
            groups[value] = {
                "n": int(rows.sum()),
                "macro_dice": json_float(np.mean(dices)) if dices else None,
                "per_structure": per_structure,
            }
        if groups:
            out[grouping] = groups
    return out


def segmentation_report(
    pred: np.ndarray,
    truth: np.ndarray,
    structures: Sequence[str],
    patient_ids: Sequence[str] | np.ndarray,
    spacing: np.ndarray | Sequence[float] | None = None,
    lesion_structures: Sequence[str] = (),
    *,
    manifest: pd.DataFrame | None = None,
    age_bands: Sequence[float] = (),
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The segmentation metrics of one split, JSON-ready.

    ``pred`` and ``truth`` are boolean ``(n, K, H, W)`` masks (K = ``len(structures)``),
    ``patient_ids`` names each image's patient (the bootstrap unit), ``spacing`` the mask pixel size
    in mm per image (see :func:`image_metrics`), ``lesion_structures`` the structures that also get
    detection metrics, ``manifest`` the split's rows in image order for the subgroup table. Returns::

        {"n", "n_patients", "unit" ("mm" or "px"), "ci", "resamples",
         "per_structure": {name: {"n", "truth_present", "pred_present", "unit",
                                  "dice", "dice_ci", "iou", "iou_ci", "hd95", "hd95_ci", "msd", "msd_ci",
                                  "dice_n", "distance_n", "distance_undefined",
                                  "lesion": {"sensitivity", "sensitivity_ci", "specificity", "specificity_ci",
                                             "lesion_recall", "lesion_recall_ci", "images_with_lesion",
                                             "images_without_lesion", "lesions", "lesions_found",
                                             "false_positive_lesions"}  # lesion structures only
                                  }},
         "macro": {"dice", "dice_ci", "iou", "iou_ci", "hd95", "hd95_ci", "msd", "msd_ci", "n_structures"},
         "subgroups": {grouping: {value: {"n", "macro_dice", "per_structure": {name: {"n", "dice", ...}}}}}}

    Undefined values are ``None`` (module docstring); ``dice_n``/``distance_n`` count the images a
    mean is over.
    """
    pred, truth = _check_masks(pred, truth)
    n, k = pred.shape[:2]
    if len(structures) != k:
        raise ValueError(f"{len(structures)} structure names for masks with {k} structures.")
    unknown = sorted(set(lesion_structures) - set(structures))
    if unknown:
        raise ValueError(f"lesion structures {unknown} are not among the structures {list(structures)}.")
    groups = np.asarray(patient_ids).reshape(-1)
    if groups.shape != (n,):
        raise ValueError(f"patient_ids has {groups.size} entries for {n} images.")
    lesion = [name in lesion_structures for name in structures]
    scores = image_metrics(pred, truth, spacing, lesion)
    unit = "px" if spacing is None else "mm"
    _, index = np.unique(groups, return_inverse=True)
    ratios = _ratios(scores, lesion)
    point = ratios.point()
    boot, macro_boot = _bootstrap(ratios, index, k, n_bootstrap, seed) if n_bootstrap > 0 and n else (None, None)

    per_structure = {
        name: _structure_entry(scores, j, point, boot, ratios, ci, unit) for j, name in enumerate(structures)
    }
    macro: dict[str, Any] = {}
    for m, metric in enumerate(_METRICS):
        values = [e[metric] for e in per_structure.values() if e[metric] is not None]
        macro[metric] = json_float(np.mean(values)) if values else None
        macro[f"{metric}_ci"] = percentile_ci(macro_boot[:, m], ci) if macro_boot is not None and values else None
    macro["n_structures"] = sum(e["dice"] is not None for e in per_structure.values())
    return {
        "n": n,
        "n_patients": int(index.max()) + 1 if n else 0,
        "unit": unit,
        "ci": ci,
        "resamples": n_bootstrap if boot is not None else 0,
        "per_structure": per_structure,
        "macro": macro,
        "subgroups": _subgroups(scores, structures, manifest, age_bands) if manifest is not None else {},
    }
