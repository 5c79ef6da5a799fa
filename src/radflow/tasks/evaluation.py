"""What a kind's evaluation hooks take and give back: one split's arrays, figures to draw, tables to print.

:mod:`radflow.evaluate.report` predicts a split and hands the kind an :class:`EvalData`; the kind
computes its metrics body with :mod:`radflow.metrics`, names its headline metrics, and describes its
figures (:class:`Figure`) and printed summary (:class:`ReportTable` and lines) as data. The report
draws and prints them, so kinds import neither matplotlib nor rich and stay importable by the
torch-free serving process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from radflow.metrics.thresholds import ThresholdMethod

__all__ = ["EvalData", "Figure", "PlotKind", "ReportTable", "auroc_cell", "fmt", "pct"]

PlotKind = Literal["roc", "pr", "reliability", "confusion", "scatter", "error_by_band", "worst_cases", "froc"]
"""The figures :mod:`radflow.evaluate.plots` draws; a :class:`Figure` names one of them."""


@dataclass
class EvalData:
    """One evaluated split: predictions, targets and the evaluation settings a kind's metrics need."""

    labels: list[str]
    split: str
    targets: np.ndarray
    """Targets of the split's rows in user units, one column per label (NaN = unknown)."""
    scores: np.ndarray
    """The model's activated outputs for the same rows; for a dense kind the predicted masks, boolean
    ``(n, K, S, S)`` (the maps thresholded batch by batch, so a large split is never held as float maps)."""
    manifest: pd.DataFrame
    """The split's manifest rows (subgroup columns, ``sex``)."""
    val: Callable[[], tuple[np.ndarray, np.ndarray] | None]
    """``(targets, scores)`` of the val split, predicted on first call; None when the dataset has none, and for a
    dense kind (which chooses no operating point on it)."""
    stored_thresholds: Mapping[str, float] | None
    """Thresholds the checkpoint carries, for labels the val split cannot choose one for."""
    unit: str | None
    n_bootstrap: int
    ci: float
    calibration_bins: int
    threshold_method: ThresholdMethod
    target_sensitivity: float
    age_bands: list[float]
    untrained: list[str] = field(default_factory=list)
    """Labels with no positive in the model's train split: no operating point is chosen for them."""
    masks: np.ndarray | None = None
    """A dense kind's true masks of the split's rows, boolean ``(n, K, S, S)`` at model size (``scores`` are
    the predicted probability maps of the same shape); None for the other kinds."""
    spacing: np.ndarray | None = None
    """Pixel size in mm of the model-size masks, ``(n, 2)`` (row, column), when known: distances in mm, else px."""
    lesion_structures: list[str] | None = None
    """Structures that also get detection metrics (any-lesion sensitivity/specificity, per-lesion recall);
    None: the kind's own list."""
    warnings: list[str] = field(default_factory=list)
    """Notes the kind adds about this evaluation (printed and stored in the JSON)."""


@dataclass(frozen=True)
class Figure:
    """One PNG of the report: which plot, its file name and the plot function's arguments (``path`` aside)."""

    plot: PlotKind
    file: str
    args: dict[str, Any]
    images: tuple[int, ...] = ()
    """Positions in the split of images the figure shows: the report reads their pixels (``(n, S, S)`` uint8)
    and passes them as the plot's ``images`` argument, so a kind describes a gallery without the dataset."""


@dataclass
class ReportTable:
    """A table of the printed report, as text cells."""

    columns: list[str]
    sections: list[list[list[str]]]
    """Groups of rows; a rule is drawn between groups."""
    title: str | None = None


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def auroc_cell(entry: Mapping[str, Any]) -> str:
    """``0.812 [0.701-0.903]``: an AUROC with its interval when there is one; ``n/a`` when there is no AUROC."""
    if entry.get("auroc") is None:
        return "n/a"
    ci = entry.get("auroc_ci")
    return f"{entry['auroc']:.3f} [{fmt(ci[0])}-{fmt(ci[1])}]" if ci else f"{entry['auroc']:.3f}"
