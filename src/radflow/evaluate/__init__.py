"""Evaluation reports: predict a split, write the JSON, figures and tables, log to MLflow (statistics: metrics/)."""

from __future__ import annotations

from radflow.evaluate.report import evaluate_and_log, evaluate_checkpoint, metric_key, render_evaluation

__all__ = ["evaluate_and_log", "evaluate_checkpoint", "metric_key", "render_evaluation"]
