"""Evaluation: metrics with confidence intervals, calibration and subgroups; the report and its figures."""

from __future__ import annotations

from radflow.evaluate.report import evaluate_and_log, evaluate_checkpoint, metric_key, render_evaluation

__all__ = ["evaluate_and_log", "evaluate_checkpoint", "metric_key", "render_evaluation"]
