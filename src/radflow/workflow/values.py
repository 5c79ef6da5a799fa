"""A workflow whose answer is a value (segment -> crop by mask -> regress: bone age) scored against per-image truth.

Pure arithmetic over workflow answers (no model runs here), so hand-made answers test it; the entry that runs a
workflow over a split and logs it is :func:`radflow.workflow.evaluate.evaluate_workflow`.

* :func:`answer_value`: the image's value in an answer: the output step's ``prediction.value`` (a whole-image
  value: an aggregate of the crops, or a model on the whole image), or the mean of its crops' values when the
  output is per crop; None when the answer has none (a crop step found no structure).
* :func:`score_values`: ``mae``, ``rmse``, ``bias`` (mean of value - truth: positive = too old), ``abs_bias``
  over the answered images; ``within_12`` (the share of ALL images answered within 12 units, months for bone
  age: an unanswered image is not within) and ``answered`` (the share with a value).

Gates on these (:data:`VALUE_METRICS`) are ``max_METRIC`` / ``min_METRIC``
(:func:`radflow.workflow.evaluate.check_gates`); :data:`LOWER_IS_BETTER` says which way a ``max_drop``
against a champion composition points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LOWER_IS_BETTER", "VALUE_METRICS", "WITHIN", "answer_value", "score_values"]

WITHIN = 12.0
"""``within_12``: an answer this close to the truth (in the value's unit: months for bone age) counts as within."""
VALUE_METRICS = ("mae", "rmse", "bias", "abs_bias", "within_12", "answered")
"""The end-to-end metrics of a value workflow a gate may name."""
LOWER_IS_BETTER = frozenset({"mae", "rmse", "abs_bias"})
"""Metrics that get worse by rising: their ``max_drop`` limits a rise."""


def answer_value(answer: dict[str, Any]) -> float | None:
    """The value :func:`radflow.workflow.run_workflow`'s ``answer`` gives its image (see the module docstring)."""
    output = answer.get("answer") or {}
    prediction = output.get("prediction")
    if isinstance(prediction, dict):
        value = prediction.get("value")
        return None if value is None else float(value)
    values = [
        float(c["prediction"]["value"])
        for c in output.get("crops") or []
        if isinstance(c.get("prediction"), dict) and c["prediction"].get("value") is not None
    ]
    return float(np.mean(values)) if values else None


def score_values(
    answers: Sequence[tuple[str, str, dict[str, Any], float]],
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """(metrics, per-image results) of ``answers``: per image (patient, image id, the workflow's answer, the truth).

    A metric that needs an answered image is None when none was answered.
    """
    images: list[dict[str, Any]] = []
    errors: list[float] = []
    for patient, image_id, answer, truth in answers:
        value = answer_value(answer)
        error = None if value is None else value - float(truth)
        if error is not None:
            errors.append(error)
        images.append({
            "image_id": image_id, "patient": patient, "truth": float(truth), "value": value, "error": error,
            "found": bool(answer.get("found", True)), "message": answer.get("message"),
        })  # fmt: skip
    err = np.asarray(errors, np.float64)
    n = len(images)
    answered = bool(len(err))
    bias = float(err.mean()) if answered else None
    metrics: dict[str, float | None] = {
        "mae": float(np.abs(err).mean()) if answered else None,
        "rmse": float(np.sqrt((err**2).mean())) if answered else None,
        "bias": bias,
        "abs_bias": None if bias is None else abs(bias),
        "within_12": float((np.abs(err) <= WITHIN).sum() / n) if n else None,
        "answered": float(len(err) / n) if n else None,
    }
    return metrics, images
