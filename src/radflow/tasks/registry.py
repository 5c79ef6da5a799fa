"""The registry of task kinds: a kind registers with :func:`register_task`, callers look it up by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from radflow.errors import ConfigError, did_you_mean
from radflow.tasks.base import InvalidFeedbackError, TaskKind

__all__ = ["get_task", "list_tasks", "register_task", "validate_feedback"]

_TASKS: dict[str, TaskKind] = {}
K = TypeVar("K", bound=type[TaskKind])


def register_task(cls: K) -> K:
    """Class decorator: register one instance of the kind under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"task kind {cls.__name__} has no name.")
    if name in _TASKS and type(_TASKS[name]) is not cls:
        raise ValueError(f"task kind {name!r} is registered twice ({type(_TASKS[name]).__name__}, {cls.__name__}).")
    _TASKS[name] = cls()
    return cls


def get_task(name: str) -> TaskKind:
    """The kind registered as ``name``; an unknown name is a ConfigError with a did-you-mean hint."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown task {name!r}; radflow knows {', '.join(sorted(_TASKS))}.{did_you_mean(str(name), _TASKS)}"
        ) from None


def list_tasks() -> list[str]:
    """Names of the registered task kinds, sorted."""
    return sorted(_TASKS)


def validate_feedback(outputs: Mapping[str, Any], labels: Mapping[str, int] | None, value: float | None) -> None:
    """Check a correction against the stored answer it corrects, by the kind that answered.

    The store keeps answers, not task names, so the answer's key (``findings`` or ``prediction``)
    picks the kind; kinds that share a key share the feedback schema.
    """
    for kind in _TASKS.values():
        if outputs.get(kind.response_key) is not None:
            kind.validate_feedback(outputs, labels, value)
            return
    raise InvalidFeedbackError("this prediction holds no answer that feedback can correct.")
