"""Evaluation figures as PNG files: ROC and PR curves, reliability diagram, confusion matrices, regression plots,
the segmentation worst-cases gallery, the detection FROC curves.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas directly, never
through pyplot, so plotting needs no display, keeps no global figure state and is safe in a server
or a worker thread. Every function writes one file and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

__all__ = [
    "confusion_matrices",
    "froc_curves",
    "pr_curves",
    "regression_error_by_band",
    "regression_scatter",
    "reliability_diagram",
    "roc_curves",
    "worst_cases",
]

_DPI = 110


def _figure(width: float = 6.0, height: float = 5.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def roc_curves(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], aurocs: dict[str, float | None], path: Path
) -> Path:
    """One ROC curve per label (labels lacking a class are listed as n/a), AUROC in the legend."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for j, label in enumerate(labels):
        known = ~np.isnan(y_true[:, j])
        y, s = y_true[known, j], y_score[known, j]
        if aurocs.get(label) is None:
            ax.plot([], [], label=f"{label} (AUROC n/a)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{label} (AUROC {_fmt(aurocs[label])})")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC curves")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def pr_curves(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], auprcs: dict[str, float | None], path: Path
) -> Path:
    """One precision-recall curve per label, AUPRC in the legend."""
    fig = _figure()
    ax = fig.add_subplot()
    for j, label in enumerate(labels):
        known = ~np.isnan(y_true[:, j])
        y, s = y_true[known, j], y_score[known, j]
        if auprcs.get(label) is None:
            ax.plot([], [], label=f"{label} (AUPRC n/a)")
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(recall, precision, where="post", linewidth=1.5, label=f"{label} (AUPRC {_fmt(auprcs[label])})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("Precision-recall curves")
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


def reliability_diagram(curves: dict[str, list[dict[str, Any]]], eces: dict[str, float | None], path: Path) -> Path:
    """Observed positive rate against mean predicted probability per bin, one line per curve."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="perfect calibration")
    for name, bins in curves.items():
        points = [(b["mean_predicted"], b["observed"]) for b in bins if b["n"]]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=f"{name} (ECE {_fmt(eces.get(name))})")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def _matrix(ax: Any, matrix: np.ndarray, names: Sequence[str], title: str) -> None:
    top = int(matrix.max()) if matrix.size else 0
    # vmin 0: colour shows counts, not the spread between the smallest and largest cell.
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(top, 1))
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
    ax.set_yticks(range(len(names)), names, fontsize="small")
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize="medium")


def confusion_matrices(
    matrices: Mapping[str, np.ndarray | Sequence[Sequence[int]]],
    path: Path,
    names: Sequence[str] = ("negative", "positive"),
) -> Path:
    """A grid of confusion matrices (rows true, columns predicted), one panel per entry."""
    count = max(len(matrices), 1)
    cols = min(count, 4)
    rows = (count + cols - 1) // cols
    size = 3.0 if len(names) <= 2 else 0.6 * len(names) + 2.5
    fig = _figure(size * cols, size * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (title, matrix) in zip(axes.flat, matrices.items(), strict=False):
        _matrix(ax, np.asarray(matrix), names, title)
    for ax in list(axes.flat)[len(matrices) :]:
        ax.set_axis_off()
    return _save(fig, path)


def regression_scatter(y_true: np.ndarray, y_pred: np.ndarray, path: Path, unit: str | None = None) -> Path:
    """Predicted against true values with the identity line."""
    fig = _figure()
    ax = fig.add_subplot()
    ok = ~np.isnan(y_true)
    ax.scatter(y_true[ok], y_pred[ok], s=8, alpha=0.6)
    if ok.any():
        lo = float(min(y_true[ok].min(), y_pred[ok].min()))
        hi = float(max(y_true[ok].max(), y_pred[ok].max()))
        ax.plot([lo, hi], [lo, hi], linestyle=":", color="grey")
    suffix = f" ({unit})" if unit else ""
    ax.set(xlabel=f"true{suffix}", ylabel=f"predicted{suffix}")
    ax.set_title("Predicted vs true")
    return _save(fig, path)


def regression_error_by_band(by_band: dict[str, dict[str, Any]], path: Path, unit: str | None = None) -> Path:
    """Bar chart of MAE per band of the true value, with the image count on each bar."""
    fig = _figure()
    ax = fig.add_subplot()
    names = list(by_band)
    maes = [by_band[b]["mae"] or 0.0 for b in names]
    bars = ax.bar(names, maes)
    for bar, name in zip(bars, names, strict=True):
        ax.annotate(
            f"n={by_band[name]['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom"
        )
    suffix = f" ({unit})" if unit else ""
    ax.set(xlabel=f"true value band{suffix}", ylabel=f"MAE{suffix}")
    ax.set_title("Error by band")
    return _save(fig, path)


def worst_cases(
    images: np.ndarray,
    image_ids: Sequence[str],
    truth: np.ndarray,
    pred: np.ndarray,
    dice: np.ndarray,
    structures: Sequence[str],
    path: Path,
) -> Path:
    """A gallery of segmentation cases: each image with its true masks outlined and its predicted masks filled.

    ``images`` are ``(n, S, S)`` uint8, ``truth`` and ``pred`` boolean ``(n, K, S, S)``, ``dice``
    ``(n, K)`` (NaN: no Dice); one colour per structure. Each panel is titled with its image id and
    mean Dice and lists the Dice of each structure that has one.
    """
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    count = max(len(images), 1)
    cols = min(count, 4)
    rows = (count + cols - 1) // cols
    fig = _figure(3.0 * cols, 3.4 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = [colormaps["tab10"](k % 10) for k in range(len(structures))]
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(images):
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for k, colour in enumerate(colours):
            if pred[i, k].any():
                fill = np.zeros((*pred.shape[2:], 4))
                fill[pred[i, k]] = (*colour[:3], 0.35)
                ax.imshow(fill, interpolation="nearest")
            if truth[i, k].any():
                ax.contour(truth[i, k].astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
        scored = [(name, d) for name, d in zip(structures, dice[i], strict=True) if np.isfinite(d)]
        mean = float(np.mean([d for _, d in scored])) if scored else None
        ax.set_title(f"{image_ids[i]}  Dice {_fmt(mean)}", fontsize="small")
        ax.text(
            0.02,
            0.02,
            "\n".join(f"{name} {d:.2f}" for name, d in scored),
            transform=ax.transAxes,
            fontsize="x-small",
            color="white",
            va="bottom",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 2, "linewidth": 0},
        )
    handles = [Line2D([], [], color=c, linewidth=4, label=name) for name, c in zip(structures, colours, strict=True)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(structures), 5), fontsize="small")
    fig.suptitle("Lowest-Dice images: truth outlined, prediction filled", fontsize="medium")
    return _save(fig, path)


def froc_curves(
    fp_rates: Sequence[float],
    pooled: Sequence[float | None] | None,
    per_class: Mapping[str, Sequence[float | None] | None],
    cpms: Mapping[str, float | None],
    path: Path,
) -> Path:
    """FROC: sensitivity per false-positive rate per image (log axis), pooled over labels and per label.

    ``pooled`` and each ``per_class`` entry hold a sensitivity per ``fp_rates`` entry (None: no true box);
    ``cpms`` the CPM (their mean) per curve, ``"pooled"`` for the pooled one, shown in the legend.
    """
    rates = np.asarray(fp_rates, dtype=np.float64)
    fig = _figure()
    ax = fig.add_subplot()
    curves = [("all labels", "pooled", pooled, 2.2)] + [(label, label, sens, 1.3) for label, sens in per_class.items()]
    for name, key, sens, width in curves:
        values = np.array([np.nan if v is None else v for v in sens or []], dtype=np.float64)
        if not values.size or np.isnan(values).all():
            ax.plot([], [], label=f"{name} (no true box)")
            continue
        ax.plot(rates, values, marker="o", markersize=3, linewidth=width, label=f"{name} (CPM {_fmt(cpms.get(key))})")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set(xlabel="false positives per image", ylabel="sensitivity", ylim=(-0.02, 1.02))
    ax.set_title("FROC curves")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)
