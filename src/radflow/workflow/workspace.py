"""A workspace's workflows for local use (``radflow workflow list|predict|evaluate``): read from its params.yaml,
loaded against its registry, described as the server lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radflow.config import WorkflowConfig, load_params
from radflow.errors import NotFoundError, did_you_mean
from radflow.tracking import require_store, resolve_tracking_uri
from radflow.workflow.graph import Workflow, WorkflowError
from radflow.workflow.load import load_workflow, load_workflows

__all__ = ["describe_workflow", "workspace_workflow", "workspace_workflows"]


def _declared(workspace: Path) -> dict[str, WorkflowConfig]:
    params = Path(workspace) / "params.yaml"
    if not params.is_file():
        raise NotFoundError(f"no params.yaml in {workspace}: run this in a radflow workspace (or pass --workspace).")
    return dict(load_params(params).workflows)


def _uri(workspace: Path, tracking_uri: str | None, configs: list[WorkflowConfig]) -> str:
    """The registry the workflows' models resolve in; a missing local store is an error when one is named."""
    uri = resolve_tracking_uri(tracking_uri, workspace)
    if any(str(s.model).startswith(("models:/", "runs:/")) for c in configs for s in c.steps if s.model):
        require_store(uri)
    return uri


def workspace_workflows(
    workspace: Path, tracking_uri: str | None = None, threads: int | None = 1
) -> dict[str, Workflow | WorkflowError]:
    """Every workflow the workspace declares, loaded, or the error that keeps it from loading."""
    declared = _declared(workspace)
    if not declared:
        return {}
    return load_workflows(
        declared, tracking_uri=_uri(workspace, tracking_uri, list(declared.values())), threads=threads
    )


def workspace_workflow(
    workspace: Path, name: str, tracking_uri: str | None = None, threads: int | None = 1
) -> Workflow:
    """The workspace's workflow ``name``, loaded (its models resolved through the registry)."""
    declared = _declared(workspace)
    if name not in declared:
        known = ", ".join(declared) or "none (add a workflows: block to params.yaml)"
        raise NotFoundError(
            f"no workflow {name!r} in {workspace}/params.yaml; it declares {known}.{did_you_mean(name, declared)}"
        )
    uri = _uri(workspace, tracking_uri, [declared[name]])
    return load_workflow(name, declared[name], tracking_uri=uri, threads=threads)


def describe_workflow(name: str, workflow: Workflow | WorkflowError) -> dict[str, Any]:
    """``{"name", "ready", "description", "output", "gates", "steps": [{"name", "action", "kind", "inputs",
    "model"?, "challenger"?, "challenger_weight"?}]}``, or ``{"name", "ready": false, "error"}`` for one that did
    not load (``GET /v1/workflows`` lists the same, with each endpoint)."""
    if isinstance(workflow, WorkflowError):
        return {"name": name, "ready": False, "error": str(workflow)}
    steps = [
        {
            "name": s.name,
            "action": s.action,
            "kind": str(s.kind),
            "inputs": s.inputs,
            **({"model": s.resolved.uri} if s.resolved is not None else {}),
            **(
                {"challenger": s.challenger_resolved.uri, "challenger_weight": s.config.challenger_weight}
                if s.challenger_resolved is not None
                else {}
            ),
        }
        for s in workflow.steps
    ]
    return {
        "name": name,
        "ready": True,
        "description": workflow.config.description,
        "output": workflow.output,
        "gates": dict(workflow.config.gates),
        "steps": steps,
    }
