"""Task kinds as plugins: each kind (multi-label, multi-class, regression, segmentation) declares in one module
what the rest of radflow used to branch on; see :class:`radflow.tasks.base.TaskKind`.

Adding a kind: write ``radflow/tasks/<kind>.py`` with a :class:`TaskKind` subclass decorated by
:func:`register_task`, import it below, and test it through ``tests/tasks``.
"""

from __future__ import annotations

from radflow.tasks import detection, multiclass, multilabel, regression, segmentation  # noqa: F401  (importing registers the kinds)
from radflow.tasks.base import (
    DEFAULT_THRESHOLD,
    Finding,
    InvalidFeedbackError,
    LabelSchema,
    LossFn,
    NotBuiltError,
    Prediction,
    TaskKind,
    metric_key,
)
from radflow.tasks.registry import get_task, list_tasks, register_task, validate_feedback

__all__ = [
    "DEFAULT_THRESHOLD",
    "Finding",
    "InvalidFeedbackError",
    "LabelSchema",
    "LossFn",
    "NotBuiltError",
    "Prediction",
    "TaskKind",
    "get_task",
    "list_tasks",
    "metric_key",
    "register_task",
    "validate_feedback",
]
