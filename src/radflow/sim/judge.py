"""Whether a prediction disagrees with ground truth beyond a threshold: the load test's correctness check.

Standard library only: the Locust process imports this module, and nothing heavier may load under
gevent's monkeypatching.

The rule, one number ``max_error`` per task:

* classification: a prediction fails when, for any label whose truth is known, the predicted
  probability is more than ``max_error`` away from the truth (default 0.9): a labelled positive
  scored below 0.1 or a labelled negative above 0.9. Only confident misses count, so a load test
  measures the service (wrong model, broken preprocessing, mixed-up responses under load), not the
  ordinary errors a model makes near its threshold.
* regression: ``|predicted - true| > max_error`` in the model's unit (default 24 months for bone age,
  about two standard deviations of a good model's error).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DEFAULT_MAX_ERROR", "default_max_error", "judge"]

DEFAULT_MAX_ERROR = {"classification": 0.9, "regression": 24.0}


def default_max_error(task: str) -> float:
    """The default threshold for a dataset task ("multilabel", "multiclass", "regression").

    Keyed by the task kind's ``family`` but spelled out here: the Locust process imports this module
    under gevent, so it stays standard-library only and cannot import :mod:`radflow.tasks` (NumPy).
    """
    return DEFAULT_MAX_ERROR["regression" if task == "regression" else "classification"]


def judge(answer: dict[str, Any], truth: dict[str, float], max_error: float) -> str | None:
    """A short, stable failure reason when ``answer`` (a /v1/predict response) misses ``truth``; else None.

    Reasons name the label but not the numbers, so a load-test report groups them into a few rows.
    """
    if not truth:
        return None
    findings = answer.get("findings")
    if findings is not None:
        scores = {f["label"]: float(f["probability"]) for f in findings}
        for label, value in truth.items():
            if label in scores and abs(scores[label] - value) > max_error:
                kind = "positive" if value >= 0.5 else "negative"
                return f"wrong prediction: {label} ({kind}) off by more than {max_error:g}"
        return None
    prediction = answer.get("prediction")
    if isinstance(prediction, dict) and len(truth) == 1:
        raw = prediction.get("value")
        if raw is None or not math.isfinite(float(raw)):
            return "wrong prediction: no value"
        ((label, target),) = truth.items()
        if abs(float(raw) - target) > max_error:
            unit = prediction.get("unit") or ""
            return f"wrong prediction: {label} off by more than {max_error:g} {unit}".rstrip()
        return None
    return "wrong prediction: the answer has neither findings nor a value"
