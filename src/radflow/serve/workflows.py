"""``/v1/workflows``: the workspace's workflows (:mod:`radflow.workflow`) listed and served, one endpoint each.

The workflows of the served workspace's ``workflows:`` block are loaded once, on the first call of a
workflow route, each model resolved through the registry as the server's own model is. A workflow
that does not load (an unknown model or alias, a cycle, a step that cannot take its input) is listed
with its error and answers 503 saying why; the others serve. Uploads are read as ``/v1/predict``
reads them (multipart field ``file`` or a raw image body, the same size limit), under the same
admission (503 at capacity) and the same roles (``predict``). Each step's latency is a Prometheus
histogram on the service's ``/metrics``: ``radflow_workflow_step_seconds{workflow, step}`` (step
``total`` for the whole answer, decode included).

Every answer is logged as ``/v1`` predictions are (:meth:`radflow.inference.InferenceService.log_workflow`):
a prediction row per model step (per crop on crops) under the step's model name and version, arm
``workflow``, tagged with the workflow and step and linked by the answer's ``request_id``; each model step
entry of the answer lists its rows' ``prediction_ids`` (feedback goes to ``POST /v1/feedback`` as for any
prediction). The score histograms and each step model's drift window (tracked when the workflows load)
see them as they see the service's own model.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from radflow.data.decode import DecodedImage, decode_image, sniff_format
from radflow.errors import NotFoundError, did_you_mean
from radflow.hardware import available_cores
from radflow.inference.errors import ServiceError, UnsupportedMediaError
from radflow.inference.routing import takes_challenger
from radflow.inference.service import InferenceService, model_identity
from radflow.runtime import InvalidInputError
from radflow.serve.common import error_responses, json_answer, multipart_file, read_body, service_of, settle_heap
from radflow.workflow import Trace, Workflow, WorkflowError, load_workflows, run_workflow
from radflow.workflow.workspace import describe_workflow

__all__ = ["answer_in_turn", "loaded_workflows", "observe_steps", "reload_workflows", "workflow_answer", "workflows"]

log = logging.getLogger(__name__)
_rng = random.Random()
"""Routes a step's challenger for requests without ``X-Routing-Key`` (the service's rule: ``takes_challenger``)."""

workflows = APIRouter(prefix="/v1/workflows", tags=["workflows"])

_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY["schema"]}, "required": ["file"]}
            },
            "application/octet-stream": {**_BINARY, "description": "Any raw PNG, JPEG or DICOM; the type is sniffed."},
        },
    }
}


def _lock(state: Any) -> asyncio.Lock:
    lock: asyncio.Lock | None = getattr(state, "workflows_lock", None)
    if lock is None:
        lock = state.workflows_lock = asyncio.Lock()
    return lock


def _slots(state: Any) -> asyncio.Semaphore:
    """How many workflow answers run at once in this process: one per core.

    A workflow answer is mostly Python (decode, NMS, each crop's preprocessing and answer, a logged row
    per crop), so answers beyond the cores only take turns at the GIL, each slower: one process went from
    142 img/s at 2 connections to 106 at 8 (bench/workflow.py, 2 cores). The others wait their turn here,
    admitted (``max_in_flight`` still bounds them: 503 beyond).
    """
    slots: asyncio.Semaphore | None = getattr(state, "workflow_slots", None)
    if slots is None:
        slots = state.workflow_slots = asyncio.Semaphore(available_cores())
    return slots


async def loaded_workflows(request: Request) -> dict[str, Workflow | WorkflowError]:
    """The app's workflows by name (loaded on first use, once, in a thread: models are opened)."""
    state = request.app.state
    found: dict[str, Workflow | WorkflowError] | None = getattr(state, "workflows", None)
    if found is not None:
        return found
    async with _lock(state):
        if getattr(state, "workflows", None) is None:
            state.workflow_steps = _step_histogram(request)
            state.workflows = await asyncio.to_thread(_load, request)
    loaded: dict[str, Workflow | WorkflowError] = state.workflows
    return loaded


async def reload_workflows(request: Request) -> list[dict[str, Any]]:
    """Load the workspace's workflows again (``/admin/reload``): aliases re-resolved, params.yaml read again.

    The new set replaces the old in one assignment once it has loaded, so requests keep being answered (a
    request in flight finishes on the workflow it started with). A workflow that no longer loads is listed
    with its error and answers 503; the others serve. A params.yaml that does not parse raises (the old
    workflows keep serving). Returns the listing ``GET /v1/workflows`` gives.
    """
    state = request.app.state
    async with _lock(state):
        if getattr(state, "workflow_steps", None) is None:
            state.workflow_steps = _step_histogram(request)
        state.workflows = await asyncio.to_thread(_load, request)
    return [_describe(n, w) for n, w in state.workflows.items()]


def _step_histogram(request: Request) -> Any:
    """``radflow_workflow_step_seconds`` on the service's own registry (created once per app, under the load lock)."""
    from prometheus_client import Histogram

    return Histogram(
        "radflow_workflow_step_seconds",
        "Time of each workflow step (step 'total': the whole answer, decode included).",
        ["workflow", "step"],
        buckets=_STEP_BUCKETS,
        registry=service_of(request).metrics.registry,
    )


def _load(request: Request) -> dict[str, Workflow | WorkflowError]:
    """The workspace's workflows, loaded; then the heap is settled (:func:`radflow.serve.common.settle_heap`)."""
    loaded = _read_workflows(request)
    settle_heap()
    return loaded


def _read_workflows(request: Request) -> dict[str, Workflow | WorkflowError]:
    from radflow.config import load_params

    s = service_of(request).settings
    params = s.workspace / "params.yaml" if s.workspace is not None else None
    if params is None or not params.is_file():
        return {}
    loaded = load_workflows(
        load_params(params).workflows,
        tracking_uri=s.resolved_tracking_uri(),
        threads=s.threads,
        max_pixels=s.max_pixels,
        max_aspect_ratio=s.max_aspect_ratio,
    )
    service = service_of(request)
    served = {a.name for a in service.router.arms()} if service.router is not None else set()
    for name in sorted(served & set(loaded)):
        loaded[name] = WorkflowError(
            f"workflow {name!r}: its name is the served model's, so /v2/models/{name} would name both; "
            "give the workflow another name in params.yaml."
        )
        log.error("%s", loaded[name])
    _track(service, loaded)
    return loaded


def _track(service: InferenceService, loaded: dict[str, Workflow | WorkflowError]) -> None:
    """A drift monitor for each step model version (each once), as the service has for its own model."""
    seen: set[int] = set()
    for workflow in loaded.values():
        if isinstance(workflow, WorkflowError):
            continue
        for step in workflow.steps:
            for model, resolved in ((step.model, step.resolved), (step.challenger, step.challenger_resolved)):
                if model is None or id(model) in seen:
                    continue
                seen.add(id(model))
                name, version, _ = model_identity(model, resolved)
                in_mlflow = resolved is not None and resolved.ref.in_mlflow
                service.track_model(model, name, version, in_mlflow=in_mlflow)


def workflow_answer(
    service: InferenceService, workflow: Workflow, data: bytes, routing_key: str | None, sex: str | None = None
) -> dict[str, Any]:
    """The workflow's answer, logged (in a thread): ``request_id`` and each model step's ``prediction_ids``.

    ``sex`` (M/F) is the patient's for a regression step (bone age), over what a DICOM's PatientSex says.
    """
    trace = Trace(fetch=service.embedding_output)
    challengers = {
        s.name
        for s in workflow.steps
        if s.challenger is not None and takes_challenger(s.config.challenger_weight, routing_key, _rng)
    }
    image: bytes | DecodedImage = data
    if sex is not None:
        limits: dict[str, Any] = dict(workflow.decode_limits)
        image = decode_image(data, name="<upload>", **limits)
        image.meta["sex"] = sex
    answer = run_workflow(workflow, image, trace=trace, challengers=challengers)
    request_id, ids = service.log_workflow(workflow.name, trace, upload=data, routing_key=routing_key)
    for step in answer["steps"]:
        if step["name"] in ids:
            step["prediction_ids"] = ids[step["name"]]
        elif step["action"] == "model":
            step["prediction_ids"] = []  # a model on no crops answered nothing
    return {"request_id": request_id, **answer}


async def answer_in_turn(
    request: Request, workflow: Workflow, data: bytes, routing_key: str | None, sex: str | None = None
) -> dict[str, Any]:
    """:func:`workflow_answer` in a thread, when one of the process's workflow slots (:func:`_slots`) is free."""
    async with _slots(request.app.state):
        return await asyncio.to_thread(workflow_answer, service_of(request), workflow, data, routing_key, sex)


def _describe(name: str, workflow: Workflow | WorkflowError) -> dict[str, Any]:
    """The workflow as ``radflow workflow list`` describes it, with the endpoint that serves it."""
    described = describe_workflow(name, workflow)
    return {**described, "endpoint": f"/v1/workflows/{name}/predict"} if described["ready"] else described


@workflows.get("", summary="The workspace's workflows, their steps and models", responses=error_responses(503))
async def list_workflows(request: Request) -> Response:
    """Shape: ``{"workflows": [{"name", "ready", "description", "output", "gates", "endpoint", "steps": [{"name",
    "action", "kind", "inputs", "model"?, "challenger"?, "challenger_weight"?}]}
    | {"name", "ready": false, "error"}]}``."""
    loaded = await loaded_workflows(request)
    return json_answer({"workflows": [_describe(n, w) for n, w in loaded.items()]})


async def _upload(request: Request) -> bytes:
    """The image: multipart field ``file``, or a raw body whose bytes are PNG, JPEG or DICOM."""
    body = await read_body(request, service_of(request).settings.max_body_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        upload = multipart_file(body, content_type)
        if upload is None:
            raise InvalidInputError("a multipart upload needs the image in a file field named 'file'.")
        return upload
    if sniff_format(body) is None:
        raise UnsupportedMediaError(
            "the body is not a PNG, JPEG or DICOM image; "
            "send it with curl -F file=@image.png or --data-binary @image.png."
        )
    return body


@workflows.post(
    "/{name}/predict",
    summary="Run one workflow on a radiograph (PNG, JPEG or DICOM) as multipart field `file` or raw body",
    openapi_extra=_UPLOAD,
    responses={
        200: {"description": "Per-step outputs and latency; `found: false` with a message when a step found nothing."},
        **error_responses(400, 404, 413, 415, 422, 503),
    },
)
async def predict_workflow(
    request: Request,
    name: str,
    sex: Literal["M", "F"] | None = Query(
        None, description="The patient's sex for a regression step (bone age); else the DICOM header's."
    ),
) -> Response:
    loaded = await loaded_workflows(request)
    workflow = loaded.get(name)
    if workflow is None:
        names = sorted(loaded)
        known = (
            f" Workflows: {', '.join(names)}."
            if names
            else " This workspace declares none (workflows: in params.yaml)."
        )
        raise NotFoundError(f"no workflow {name!r}.{did_you_mean(name, names)}{known}")
    if isinstance(workflow, WorkflowError):
        raise ServiceError(f"workflow {name!r} is not available: {workflow}", status_code=503)
    service = service_of(request)
    with service.admission.enter():
        service.require_store()
        data = await _upload(request)
        key = request.headers.get("x-routing-key")
        answer = await answer_in_turn(request, workflow, data, key, sex)
    observe_steps(request, name, answer)
    return json_answer(answer)


def observe_steps(request: Request, name: str, answer: dict[str, Any]) -> None:
    """Each step's latency of one answer of workflow ``name`` into ``radflow_workflow_step_seconds``."""
    histogram, metrics = request.app.state.workflow_steps, service_of(request).metrics
    for step in answer["steps"]:
        metrics.child(histogram, name, step["name"]).observe(step["latency_ms"] / 1000)
    metrics.child(histogram, name, "total").observe(answer["latency_ms"]["total"] / 1000)
