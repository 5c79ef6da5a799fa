"""The task-kind contract: what one kind of prediction task declares, and the response it encodes.

A task kind (multi-label findings, one class of several, a value) decides what a dataset's label
columns hold, how the network is trained and judged, what the exported graph outputs, what a
served answer and a reader's correction look like, and what serving watches for drift. Every
part of radflow that used to branch on the task name asks the kind instead, so a new kind is a new
module in :mod:`radflow.tasks`, not edits across the tree.

This module and the kinds import neither torch nor scikit-learn at import time: the torch-free
serving process imports them to encode answers. Training and evaluation hooks import what they
need inside the hook.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from radflow.errors import RadflowError
from radflow.tasks.evaluation import EvalData, Figure, ReportTable

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_THRESHOLD",
    "Finding",
    "InvalidFeedbackError",
    "LabelSchema",
    "LossFn",
    "NotBuiltError",
    "Prediction",
    "TaskKind",
    "metric_key",
]

DEFAULT_THRESHOLD = 0.5
"""Decision threshold for labels the evaluation chose none for."""

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


class InvalidFeedbackError(RadflowError):
    """A reader's correction that does not fit the prediction it corrects."""

    status_code = 422


class NotBuiltError(RadflowError, NotImplementedError):
    """A hook of a task kind whose radflow side is not built yet (the message names the missing part).

    A RadflowError, so the CLI prints one line and the server answers 501 instead of a traceback.
    """

    status_code = 501


def metric_key(label: str) -> str:
    """A label as it appears in MLflow metric names (``Pleural Effusion`` -> ``Pleural_Effusion``).

    Validation (``val_``) and test (``test_``) metric names spell labels through this one function.
    """
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", label).strip("_") or "label"


@dataclass(frozen=True)
class LabelSchema:
    """What a dataset's label columns hold for a task kind."""

    dtype: str
    """NumPy dtype of the target matrix ``Dataset.targets()`` returns."""
    values: str
    """The values a label cell may take, in words (shown in errors and docs)."""
    nan_policy: Literal["unknown", "drop_row"]
    """``unknown``: a NaN cell is ignored by the loss and the metrics of that label only;
    ``drop_row``: a row with any NaN is left out of the loss and the metrics."""
    min_labels: int = 1
    """Fewest label columns a dataset of this kind may have."""


@dataclass
class Finding:
    """One label's probability and decision at the model's threshold."""

    label: str
    probability: float
    positive: bool
    threshold: float | None
    """``None`` for a label the model never learned (no positive in its train split): no operating point."""
    untrained: bool = False
    """The label had no positive in the train split; it is never called positive."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "probability": self.probability,
            "positive": self.positive,
            "threshold": self.threshold,
        }
        if self.untrained:
            out["untrained"] = True  # only on such labels, so every other answer keeps its shape
        return out


@dataclass
class Prediction:
    """The answer for one image: findings (classification), a value with its unit (regression), or structures.

    ``structures`` is a dense kind's answer, one ``{"structure", "area_px", "area_mm2", "bbox", "rle"}`` per
    structure at the input's original size; the runtime builds it (:func:`radflow.runtime.masks.structure_answers`)
    because only it knows the input's size and pixel spacing.
    """

    findings: list[Finding] | None = None
    value: float | None = None
    unit: str | None = None
    contradictions: list[dict[str, Any]] | None = None
    """Findings that cannot all be true at once (``{"labels", "message"}`` each), for kinds that check any."""
    structures: list[dict[str, Any]] | None = None
    boxes: list[dict[str, Any]] | None = None
    """A detection kind's answer, one ``{"label", "score", "box": [x0, y0, x1, y1]}`` per box in the input's
    original pixel coordinates, best first (:meth:`radflow.tasks.detection.Detection.encode`)."""
    box_labels: list[str] | None = None
    """Every label a detection model may answer (a reader's added box may carry any of them)."""
    size: tuple[int, int] | None = None
    """The input's original (height, width), where the runtime knew it (detection answers: the boxes' bounds)."""

    @property
    def positives(self) -> list[str]:
        return [f.label for f in self.findings or [] if f.positive]

    def to_dict(self) -> dict[str, Any]:
        if self.structures is not None:
            return {"structures": self.structures}
        if self.boxes is not None:
            answer: dict[str, Any] = {"boxes": self.boxes}
            if self.box_labels is not None:
                answer["labels"] = list(self.box_labels)
            if self.size is not None:
                answer["size"] = [int(self.size[0]), int(self.size[1])]
            return answer
        if self.findings is None:
            return {"prediction": {"value": self.value, "unit": self.unit}}
        out: dict[str, Any] = {"findings": [f.to_dict() for f in self.findings]}
        if self.contradictions is not None:
            out["contradictions"] = self.contradictions
        return out


class TaskKind:
    """One kind of task. Subclasses set the class attributes and override the hooks that differ.

    Register a kind with :func:`radflow.tasks.register_task`; radflow finds it by the ``task`` of
    ``dataset.json``, of a checkpoint's meta and of an ONNX model's metadata.
    """

    name: ClassVar[str]
    """The task name stored in ``dataset.json``, checkpoints, ONNX metadata and the ``radflow.task`` tag."""
    family: ClassVar[Literal["classification", "regression", "segmentation", "detection"]]
    """How answers are judged online (AUROC/sensitivity/specificity, MAE or Dice) and in the load test."""
    network: ClassVar[Literal["pooled", "dense", "detection"]] = "pooled"
    """The network head the kind trains (:func:`radflow.train.models.model_network`): ``pooled``, one row of
    ``num_outputs`` per image, or ``dense``, ``num_outputs`` maps ``(S, S)`` at the input's size."""
    default_arch: ClassVar[str | None] = None
    """The architecture trained when ``train.arch`` is left at its (classifier) default and that does not fit
    :attr:`network`; None: the config's default fits."""
    label_schema: ClassVar[LabelSchema]
    losses: ClassVar[tuple[str, ...]]
    """``train.loss`` names that fit this kind; the first is the default."""
    monitor: ClassVar[tuple[str, Literal["min", "max"]]]
    """Validation metric early stopping and the plateau schedule watch, and its direction."""
    gate_metrics: ClassVar[tuple[str, ...]]
    """Headline test metrics (``test_...``) the registry gates read."""
    online_metric: ClassVar[str]
    """The online-evaluation metric a champion/challenger rule decides on by default."""
    output: ClassVar[str]
    """Name of the prediction output of the exported ONNX graph."""
    activation: ClassVar[Literal["sigmoid", "softmax", "denormalise"]]
    """What the graph applies to the network's raw outputs (``denormalise``: back to the target unit);
    dense kinds apply it to every pixel of every map."""
    renderer: ClassVar[Literal["findings", "value", "mask", "boxes"]]
    """Which reader-UI view shows an answer."""
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    """Inputs besides the image the network takes (``sex`` for bone age)."""
    target_unit: ClassVar[str | None] = None
    normalise_targets: ClassVar[bool] = False
    """Whether training standardises targets (mean/std stored in the model meta)."""
    response_key: ClassVar[Literal["findings", "prediction", "structures", "boxes"]]
    """The key of a ``/v1/predict`` answer that holds the prediction (see :meth:`Prediction.to_dict`)."""

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # -- data ---------------------------------------------------------------------------------

    def num_outputs(self, labels: Sequence[str]) -> int:
        """Width of the network's output for ``labels``."""
        return len(labels)

    def check_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        """Warnings about the train split's targets; a dataset the kind cannot learn raises DataError."""
        return []

    def untrained_labels(self, labels: Sequence[str], train_targets: np.ndarray) -> list[str]:
        """Labels the train split gave the model nothing to learn from (no positive); they get no threshold."""
        return []

    def pos_weight(self, train_targets: np.ndarray) -> np.ndarray | None:
        """Per-output weights of positives for ``train.pos_weight``, or None where the kind weighs none."""
        return None

    # -- training (torch is imported inside these hooks) -----------------------------------------

    def make_loss(self, name: str, pos_weight: torch.Tensor | None = None) -> LossFn:
        """The loss ``(raw outputs, targets) -> scalar`` called ``name`` (one of :attr:`losses`)."""
        raise NotImplementedError

    def activate(self, outputs: torch.Tensor, target_mean: float | None, target_std: float | None) -> torch.Tensor:
        """Raw network outputs to what the model answers (probabilities, or a value in the target unit).

        The exported graph runs this same function, so ONNX and PyTorch agree by construction.
        """
        raise NotImplementedError

    def val_batch(self, preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What validation keeps of one batch of activated predictions and targets in user units.

        Validation runs batch by batch and hands :meth:`val_metrics` the kept rows of the whole split.
        Kinds with one output row per image keep both as they are; a dense kind keeps per-image
        summaries instead of the maps, so a split's maps never have to fit in memory at once.
        """
        return preds, targets

    def val_metrics(self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Validation metrics (``val_...``) of the split's :meth:`val_batch` rows (predictions, targets)."""
        raise NotImplementedError

    def monitor_defined(self, labels: Sequence[str], val_targets: np.ndarray) -> bool:
        """Whether the val split (its label columns ``val_targets``) can yield :attr:`monitor` at all.

        Perfect predictions tell: AUROC, for one, needs both classes of some label in the split.
        """
        import math

        perfect = self.val_metrics(labels, *self.val_batch(np.nan_to_num(val_targets), val_targets))
        return math.isfinite(perfect.get(self.monitor[0], math.nan))

    # -- evaluation (scikit-learn is imported inside these hooks, through radflow.metrics) ------

    def default_age_bands(self) -> list[float] | None:
        """Age bands (in the ``age`` column's unit) that replace ``evaluate.age_bands`` when the user set none."""
        return None

    def evaluate(self, data: EvalData) -> dict[str, Any]:
        """The report's metrics body for one split (``metrics`` and what else the kind reports).

        Notes about the evaluation go to ``data.warnings``.
        """
        raise NotImplementedError

    def quality_metric(
        self, labels: Sequence[str], preds: np.ndarray, targets: np.ndarray
    ) -> tuple[Literal["macro_auroc", "mae", "mean_dice", "map50"], float | None]:
        """The one number two versions of a model are compared on (INT8 against FP32): its name and value.

        ``macro_auroc`` and ``mean_dice`` are better higher, ``mae`` lower; None where the split cannot define it.
        """
        raise NotImplementedError

    def headline(self, result: Mapping[str, Any]) -> dict[str, float | None]:
        """Flat headline numbers of an evaluation, unprefixed (``macro_auroc``, ``mae`` ...).

        Logged to MLflow as ``test_<name>``; the registry gates read those named in :attr:`gate_metrics`.
        """
        raise NotImplementedError

    def figures(
        self, labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, result: Mapping[str, Any]
    ) -> list[Figure]:
        """The report's figures, in the order they are written."""
        raise NotImplementedError

    def summary(self, result: Mapping[str, Any]) -> list[str | ReportTable]:
        """What the printed report shows below its title line: lines and tables, in order."""
        raise NotImplementedError

    # -- serving ------------------------------------------------------------------------------

    def encode(
        self, scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float | None], unit: str | None
    ) -> Prediction:
        """One image's output row as the answer a client receives.

        A ``None`` threshold marks a label the model never learned (:meth:`untrained_labels`).
        """
        raise NotImplementedError

    def validate_feedback(
        self, outputs: Mapping[str, Any], labels: Mapping[str, int] | None, value: float | None
    ) -> None:
        """Raise :class:`InvalidFeedbackError` when a correction does not fit the stored answer ``outputs``."""
        raise NotImplementedError

    def drift_features(self, labels: Sequence[str]) -> list[str]:
        """Names of the output features drift monitoring profiles, one per output column."""
        raise NotImplementedError
