"""Workflows from a workspace's ``workflows:`` block: each model step resolved once through the registry
(:func:`radflow.modelref.resolve_model_ref`), its ONNX model opened on the torch-free runtime, the DAG checked.

A model two steps (or two workflows) name is opened once. An unknown model, version or alias is the
registry's own error (it lists the registered models or the aliases there are) with the workflow and the
step in front.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from radflow.config import WorkflowConfig
from radflow.data.decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from radflow.errors import RadflowError
from radflow.modelref import ResolvedModel, resolve_model_ref
from radflow.runtime import RadflowModel
from radflow.workflow.graph import Workflow, WorkflowError, build_workflow

__all__ = ["load_workflow", "load_workflows"]

log = logging.getLogger(__name__)


def load_workflow(
    name: str,
    config: WorkflowConfig,
    *,
    tracking_uri: str | None = None,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    opened: dict[str, tuple[RadflowModel, ResolvedModel]] | None = None,
) -> Workflow:
    """The checked workflow ``name``: its models resolved and opened (``opened`` caches them by pinned URI)."""
    opened = {} if opened is None else opened

    def open_model(step: str, ref: str, what: str) -> tuple[RadflowModel, ResolvedModel]:
        try:
            resolved = resolve_model_ref(ref, tracking_uri)
            key = resolved.uri if resolved.run_id else str(resolved.path)
            if key not in opened:
                model = RadflowModel.load(
                    resolved, threads=threads, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio
                )
                opened[key] = (model, resolved)
        except RadflowError as exc:
            raise WorkflowError(f"workflow {name!r}, step {step!r}{what}: {exc}") from None
        return opened[key][0], resolved

    models: dict[str, tuple[RadflowModel, ResolvedModel | None]] = {}
    challengers: dict[str, tuple[RadflowModel, ResolvedModel | None]] = {}
    for step in config.steps:
        if step.model is not None:
            models[step.name] = open_model(step.name, step.model, "")
        if step.challenger is not None:
            challengers[step.name] = open_model(step.name, step.challenger, " (its challenger)")
    workflow = build_workflow(name, config, models, challengers)
    workflow.decode_limits = {"max_pixels": max_pixels, "max_aspect_ratio": max_aspect_ratio}
    return workflow


def load_workflows(
    configs: Mapping[str, WorkflowConfig],
    *,
    tracking_uri: str | None = None,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> dict[str, Workflow | WorkflowError]:
    """Every workflow of ``configs`` by name, or the error that keeps it from loading (the others still load)."""
    opened: dict[str, tuple[RadflowModel, ResolvedModel]] = {}
    out: dict[str, Workflow | WorkflowError] = {}
    for name, config in configs.items():
        try:
            out[name] = load_workflow(
                name,
                config,
                tracking_uri=tracking_uri,
                threads=threads,
                max_pixels=max_pixels,
                max_aspect_ratio=max_aspect_ratio,
                opened=opened,
            )
        except WorkflowError as exc:
            log.error("%s", exc)
            out[name] = exc
    return out
