"""Reproducible workspaces on DVC: ``radflow init``, the pipeline stages, ``radflow run`` and lineage."""

from __future__ import annotations

from radflow.pipeline.lineage import record_lineage, show_lineage
from radflow.pipeline.run import run_pipeline
from radflow.pipeline.stages import run_stage
from radflow.pipeline.workspace import find_workspace, init_workspace

__all__ = ["find_workspace", "init_workspace", "record_lineage", "run_pipeline", "run_stage", "show_lineage"]
