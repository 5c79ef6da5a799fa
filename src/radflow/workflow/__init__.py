"""Workflows: a DAG of registered models and glue steps (crop by box or mask, resize, aggregate) run as one.

Declared under ``workflows:`` in a workspace's params.yaml (:class:`radflow.config.WorkflowConfig`),
loaded and checked by :func:`load_workflows` (models resolved through the registry, the graph and the
kinds that flow between steps checked), run torch-free on one image by :func:`run_workflow`, served at
``/v1/workflows/{name}/predict`` (:mod:`radflow.serve.workflows`).
"""

from __future__ import annotations

from radflow.workflow.execute import WORKFLOW_ARM, WORKFLOW_CHALLENGER_ARM, ModelRun, Trace, run_workflow
from radflow.workflow.glue import (
    Crop,
    aggregate_findings,
    aggregate_values,
    crop_boxes,
    crop_masks,
    name_levels,
    patient_summary,
    resize_crops,
)
from radflow.workflow.graph import IMAGE, Kind, Step, Workflow, WorkflowError, build_workflow, model_kind
from radflow.workflow.load import load_workflow, load_workflows

__all__ = [
    "IMAGE",
    "WORKFLOW_ARM",
    "WORKFLOW_CHALLENGER_ARM",
    "Crop",
    "Kind",
    "ModelRun",
    "Step",
    "Trace",
    "Workflow",
    "WorkflowError",
    "aggregate_findings",
    "aggregate_values",
    "build_workflow",
    "crop_boxes",
    "crop_masks",
    "load_workflow",
    "load_workflows",
    "model_kind",
    "name_levels",
    "patient_summary",
    "resize_crops",
    "run_workflow",
]
