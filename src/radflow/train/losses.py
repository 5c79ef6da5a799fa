"""The training loss of a task: ``train.loss`` checked against the losses the task kind offers.

The masked losses themselves belong to the kinds (:mod:`radflow.tasks.losses`); they are
re-exported here for callers that build one directly.
"""

from __future__ import annotations

import torch

from radflow.errors import ConfigError
from radflow.tasks import LossFn, get_task
from radflow.tasks.losses import masked_bce, masked_ce, masked_l1

__all__ = ["LossFn", "default_loss", "make_loss", "masked_bce", "masked_ce", "masked_l1"]


def default_loss(task: str) -> str:
    """The loss a task trains with unless params say otherwise."""
    return get_task(task).losses[0]


def make_loss(name: str | None, task: str, pos_weight: torch.Tensor | None = None) -> LossFn:
    """The loss function ``(outputs, targets) -> scalar`` for ``task``; a loss that cannot fit the task is an error."""
    kind = get_task(task)
    name = name or kind.losses[0]
    if name not in kind.losses:
        raise ConfigError(f"train.loss {name!r} does not fit a {task} dataset; use {' or '.join(sorted(kind.losses))}.")
    return kind.make_loss(name, pos_weight)
