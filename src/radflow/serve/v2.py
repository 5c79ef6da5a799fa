"""Open Inference Protocol (KServe V2) REST, with the binary tensor data extension, as Triton answers it.

Inputs are the preprocessed FP32 tensors the graph takes (``image`` ``[-1, C, S, S]``; ``sex``
``[-1, 1]`` for regression models); they go through the same inference core as ``/v1`` uploads
(:meth:`radflow.inference.InferenceService.infer_tensors`): the same dynamic batches, and every row
is logged, metered by model/version/arm and fed to its model version's drift window.
A binary request carries ``Inference-Header-Content-Length`` (the JSON header's size) and raw
little-endian tensors after the JSON, one per input with ``parameters.binary_data_size``; no
Content-Type is needed. Outputs come back binary when asked (``binary_data_output`` or a
per-output ``binary_data``), else as JSON lists. Errors are ``{"error": msg}``: 400 for a bad
request, 404 for an unknown model, 503 while loading or overloaded, as Triton maps them.

Health answers carry the protocol's JSON bodies (``{"live": true}``, ``{"ready": bool}``, model
ready ``{"name", "ready"}``) as well as the status codes probes read. Model metadata adds the
protocol's extension ``parameters`` (flat string/number/boolean values): the task, labels and the
preprocessing a client needs to build the ``image`` tensor from a radiograph
(:func:`radflow.runtime.metadata.preprocessing_parameters`).

Each ready workflow of the workspace (:mod:`radflow.serve.workflows`) is one more model here, as a Triton
ensemble or a KServe InferenceGraph is: platform ``ensemble``, one ``BYTES`` input ``image`` (each element an
encoded PNG/JPEG/DICOM: raw bytes behind a 4-byte little-endian length in binary mode, base64 text in JSON)
and one ``BYTES`` output ``answer``, the workflow's JSON answer (``/v1/workflows/{name}/predict``'s) per
image. Its version is a digest of the step models it pins (it changes when a reload moves an alias). A
workflow can never shadow a served model: one named like a served model is refused when it loads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from radflow.errors import NotFoundError
from radflow.inference.errors import ServiceError
from radflow.inference.routing import ModelArm
from radflow.runtime.metadata import preprocessing_parameters
from radflow.serve.common import admitted, error_responses, read_body, service_of
from radflow.serve.workflows import answer_in_turn, loaded_workflows, observe_steps
from radflow.workflow import Workflow, WorkflowError

__all__ = ["BINARY_HEADER", "v2"]

BINARY_HEADER = "Inference-Header-Content-Length"
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64}
v2 = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])


def _radflow_version() -> str:
    try:
        return version("radflow")
    except PackageNotFoundError:
        return "0"


def _arm(request: Request, name: str, model_version: str | None) -> ModelArm:
    """The served model ``name`` for config and stats (a workflow has neither: the 404 says so)."""
    service = service_of(request)
    if service.require_router().find(name, model_version) is None and name in (
        getattr(request.app.state, "workflows", None) or {}
    ):
        raise NotFoundError(
            f"{name!r} is a workflow: it answers metadata, ready and infer here; config and stats are a served "
            "model's (a workflow's steps are listed by GET /v1/workflows, their latency is on /metrics)."
        )
    return service.find_arm(name, model_version)


WORKFLOW_INPUT = "image"
WORKFLOW_OUTPUT = "answer"


def workflow_version(workflow: Workflow) -> str:
    """A workflow's V2 version: 12 hex digits of a digest of the models its steps pin (with their challengers)."""
    pinned = json.dumps(workflow.models, sort_keys=True).encode()
    return hashlib.sha256(pinned).hexdigest()[:12]


async def _model(request: Request, name: str, model_version: str | None) -> ModelArm | Workflow:
    """The served model ``name`` or else the workflow of that name (NotFoundError naming both kinds)."""
    service = service_of(request)
    arm = service.require_router().find(name, model_version)
    if arm is not None:
        return arm
    workflow = (await loaded_workflows(request)).get(name)
    if workflow is None:
        return service.find_arm(name, model_version)  # raises, listing the served models
    if isinstance(workflow, WorkflowError):
        raise ServiceError(f"workflow {name!r} is not available: {workflow}", status_code=503)
    version = workflow_version(workflow)
    if model_version is not None and model_version != version:
        raise NotFoundError(f"workflow {name!r} has no version {model_version!r}; it is at version {version}.")
    return workflow


def _workflow_metadata(workflow: Workflow) -> dict[str, Any]:
    bytes_tensor = {"datatype": "BYTES", "shape": [-1]}
    parameters: dict[str, str | int | float | bool] = {
        "workflow": True,
        "description": workflow.config.description,
        "steps": ",".join(s.name for s in workflow.steps),
        "output": workflow.output,
        "models": ",".join(f"{step}={uri}" for step, uri in workflow.models.items()),
        "content_type": "application/json",
    }
    return {
        "name": workflow.name,
        "versions": [workflow_version(workflow)],
        "platform": "ensemble",
        "inputs": [{"name": WORKFLOW_INPUT, **bytes_tensor}],
        "outputs": [{"name": WORKFLOW_OUTPUT, **bytes_tensor}],
        "parameters": parameters,
    }


def _dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def _tensors(arm: ModelArm, outputs: bool) -> list[dict[str, Any]]:
    nodes = arm.model.session.get_outputs() if outputs else arm.model.session.get_inputs()
    return [{"name": n.name, "datatype": "FP32", "shape": [-1, *_dims(n.shape)[1:]]} for n in nodes]


def _model_parameters(arm: ModelArm) -> dict[str, str | int | float]:
    """The protocol's extension parameters of a model: its task, labels and how to make its ``image`` input.

    ``warnings`` (only when there are any, e.g. a version that failed its quality gates) is one string,
    the warnings joined by ``"; "``: the protocol's parameter values are scalars, never lists.
    """
    model = arm.model
    warnings = {"warnings": "; ".join(arm.loaded.warnings)} if arm.loaded.warnings else {}
    return {"task": model.task, "labels": ",".join(model.labels), **preprocessing_parameters(model.spec), **warnings}


_MODEL = error_responses(404, 503)
"""What every per-model endpoint can answer besides 200: an unknown model, or models still loading."""


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


@v2.get("/health/live", summary="Server live (liveness probe)")
async def live() -> Live:
    return Live(live=True)


@v2.get(
    "/health/ready",
    summary="Server ready (readiness probe): 200 once the models are loaded, else 503",
    responses={503: {"model": Ready, "description": "The models are still loading."}},
)
async def ready(request: Request) -> JSONResponse:
    is_ready = service_of(request).ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@v2.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "radflow",
        "version": _radflow_version(),
        "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
    }


# Declared before /models/{name}, which would otherwise take "stats" for a model name.
@v2.get("/models/stats", summary="Statistics of every served model", responses=error_responses(503))
async def all_stats(request: Request) -> dict[str, Any]:
    return {"model_stats": [_stats(a) for a in service_of(request).require_router().arms()]}


@v2.get("/models/{name}", summary="Model metadata, with the preprocessing that makes its input", responses=_MODEL)
@v2.get("/models/{name}/versions/{model_version}", summary="Model version metadata", responses=_MODEL)
async def model_metadata(request: Request, name: str, model_version: str | None = None) -> dict[str, Any]:
    arm = await _model(request, name, model_version)
    if isinstance(arm, Workflow):
        return _workflow_metadata(arm)
    return {
        "name": arm.name,
        "versions": [arm.version],
        "platform": "onnxruntime_onnx",
        "inputs": _tensors(arm, outputs=False),
        "outputs": _tensors(arm, outputs=True),
        "parameters": _model_parameters(arm),
    }


@v2.get("/models/{name}/ready", summary="Model ready", responses=_MODEL)
@v2.get("/models/{name}/versions/{model_version}/ready", summary="Model version ready", responses=_MODEL)
async def model_ready(request: Request, name: str, model_version: str | None = None) -> ModelReady:
    return ModelReady(name=(await _model(request, name, model_version)).name, ready=True)


@v2.get("/models/{name}/config", summary="Model configuration (Triton's shape)", responses=_MODEL)
@v2.get("/models/{name}/versions/{model_version}/config", summary="Model version configuration", responses=_MODEL)
async def model_config(request: Request, name: str, model_version: str | None = None) -> dict[str, Any]:
    arm = _arm(request, name, model_version)
    s = service_of(request).settings

    def block(t: dict[str, Any], key: str) -> dict[str, Any]:
        return {"name": t["name"], "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": t["shape"][1:]}

    return {
        "name": arm.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [arm.version]}},
        "max_batch_size": s.max_batch_size,
        "input": [block(t, "input") for t in _tensors(arm, outputs=False)],
        "output": [block(t, "output") for t in _tensors(arm, outputs=True)],
        "dynamic_batching": {
            "preferred_batch_size": [s.max_batch_size],
            "max_queue_delay_microseconds": int(s.max_queue_delay_ms * 1000),
        },
        "instance_group": [{"name": arm.name, "kind": "KIND_CPU", "count": 1}],
        "parameters": {  # Triton's config parameters are string maps; the same values as model metadata's
            key: {"string_value": str(value)} for key, value in _model_parameters(arm).items()
        },
    }


def _stats(arm: ModelArm) -> dict[str, Any]:
    st = arm.batcher.stats

    def d(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    zero = d(0, 0)
    return {
        "name": arm.name,
        "version": arm.version,
        "last_inference": st.last_inference_ms,
        "inference_count": st.rows,
        "execution_count": st.batches,
        "inference_stats": {
            "success": d(st.rows, st.queue_ns + st.compute_ns),
            "fail": d(st.failures, 0),
            "queue": d(st.rows, st.queue_ns),
            "compute_input": d(st.rows, 0),
            "compute_infer": d(st.rows, st.compute_ns),
            "compute_output": d(st.rows, 0),
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [
            {"batch_size": size, "compute_input": zero, "compute_infer": d(n, 0), "compute_output": zero}
            for size, n in sorted(st.sizes.items())
        ],
    }


@v2.get("/models/{name}/stats", summary="Model statistics", responses=_MODEL)
@v2.get("/models/{name}/versions/{model_version}/stats", summary="Model version statistics", responses=_MODEL)
async def model_stats(request: Request, name: str, model_version: str | None = None) -> dict[str, Any]:
    return {"model_stats": [_stats(_arm(request, name, model_version))]}


def _parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ServiceError(f"{BINARY_HEADER} {header_length!r} is not a length within the {len(body)}-byte body.")
        split = int(header_length)
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServiceError(f"the inference request header is not valid JSON ({exc}).") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ServiceError("the inference request needs an 'inputs' list.")
    _parameters(request, "the inference request")
    for key in ("inputs", "outputs"):
        specs = request.get(key) or []
        if not isinstance(specs, list) or not all(isinstance(spec, dict) for spec in specs):
            raise ServiceError(f"'{key}' must be a list of objects, got {json.dumps(request.get(key))[:200]}.")
        for spec in specs:
            _parameters(spec, f"{key[:-1]} {spec.get('name')!r}")
    return request, binary


def _parameters(spec: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ServiceError(f"{what}: 'parameters' must be an object, got {json.dumps(parameters)[:200]}.")
    return parameters


def _input_arrays(request: dict[str, Any], binary: bytes, arm: ModelArm) -> dict[str, np.ndarray]:
    expected = {n.name: n for n in arm.model.session.get_inputs()}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for spec in request["inputs"]:
        name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if not isinstance(name, str) or name not in expected:
            raise ServiceError(f"unexpected inference input {name!r}; the model takes {sorted(expected)}.")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ServiceError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}.")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ServiceError(f"input {name!r}: datatype {dtype!r} is not supported; send FP32.")
        size = _parameters(spec, f"input {name!r}").get("binary_data_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ServiceError(f"input {name!r}: binary_data_size must be a byte count, got {size!r}.")
        try:
            if size is not None:
                chunk = binary[offset : offset + size]
                if len(chunk) != size:
                    raise ServiceError(f"input {name!r}: binary data is shorter than binary_data_size {size}.")
                offset += size
                array = np.frombuffer(chunk, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")).reshape(shape)
            else:
                if "data" not in spec:
                    raise ServiceError(f"input {name!r} has neither 'data' nor parameters.binary_data_size.")
                array = np.asarray(spec["data"], dtype=_DTYPES[dtype]).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise ServiceError(f"input {name!r}: data does not fit shape {shape} ({exc}).") from None
        want = _dims(expected[name].shape)
        if len(shape) != len(want) or any(w not in (-1, g) for w, g in zip(want, shape, strict=True)):
            raise ServiceError(f"input {name!r}: expected shape {want}, got {shape}.")
        feeds[name] = np.ascontiguousarray(array, dtype=np.float32)
    missing = sorted(set(expected) - set(feeds))
    if missing:
        raise ServiceError(f"missing inference inputs {missing}.")
    rows = {a.shape[0] for a in feeds.values()}
    if len(rows) != 1 or 0 in rows:
        raise ServiceError(f"all inputs need the same, non-zero batch size; got {sorted(rows)}.")
    return feeds


def _requested_outputs(request: dict[str, Any], arm: ModelArm) -> list[tuple[str, bool]]:
    available = [o.name for o in arm.model.session.get_outputs()]
    default_binary = bool(_parameters(request, "the inference request").get("binary_data_output", False))
    asked = request.get("outputs")
    if not asked:
        return [(name, default_binary) for name in available]
    out = []
    for spec in asked:
        name = spec.get("name")
        if not isinstance(name, str) or name not in available:
            raise ServiceError(f"unknown output {name!r}; the model has {available}.")
        binary = _parameters(spec, f"output {name!r}").get("binary_data", default_binary)
        out.append((name, bool(binary)))
    return out


_OBJECT = {"type": "object", "description": "Key/value parameters (string, number or boolean values)."}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "description": "Echoed in the answer."},
        "parameters": {**_OBJECT, "description": "`binary_data_output: true` answers every output as binary."},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": list(_DTYPES)},
                    "parameters": {**_OBJECT, "description": "`binary_data_size`: bytes of this input after the JSON."},
                    "data": {"type": "array", "items": {}, "description": "Row-major values (JSON mode)."},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _OBJECT},
            },
        },
    },
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _INFER_REQUEST},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"The JSON request ({BINARY_HEADER} bytes) followed by the raw little-endian tensors.",
            },
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Outputs as JSON lists, or the JSON header followed by raw tensors when binary was asked.",
        "content": {"application/json": {}, "application/octet-stream": {}},
    },
    **error_responses(400, 404, 413, 415, 422, 503, 504),
}
_INFER_SUMMARY = "Inference on preprocessed tensors (JSON, or the binary tensor extension)"


@v2.post(
    "/models/{name}/infer",
    summary=_INFER_SUMMARY,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
    dependencies=[Depends(admitted)],
)
@v2.post(
    "/models/{name}/versions/{model_version}/infer",
    summary=_INFER_SUMMARY,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
    dependencies=[Depends(admitted)],
)
async def infer(
    request: Request,
    name: str,
    model_version: str | None = None,
    header_length: str | None = Header(
        None, alias=BINARY_HEADER, description="Size of the JSON header when raw tensors follow it."
    ),
) -> Response:
    service = service_of(request)
    target = await _model(request, name, model_version)
    if isinstance(target, Workflow):
        return await _infer_workflow(request, target, header_length)
    arm = target
    request.state.model = {"name": arm.name, "version": arm.version, "arm": arm.arm}
    body = await read_body(request, service.settings.max_body_bytes)
    payload, binary = _parse(body, header_length)
    feeds = _input_arrays(payload, binary, arm)
    wanted = _requested_outputs(payload, arm)
    results = await service.infer_tensors(arm, feeds, [n for n, _ in wanted])
    outputs, blobs = [], []
    for (out_name, as_binary), array in zip(wanted, results, strict=True):
        array = np.ascontiguousarray(array, dtype=np.float32)
        entry: dict[str, Any] = {"name": out_name, "datatype": "FP32", "shape": list(array.shape)}
        if as_binary:
            blob = array.astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": arm.name, "model_version": arm.version, "outputs": outputs}
    if "id" in payload:
        answer["id"] = payload["id"]
    head = json.dumps(answer).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={BINARY_HEADER: str(len(head))},
    )


def _images(payload: dict[str, Any], binary: bytes) -> list[bytes]:
    """The encoded images of a workflow's ``BYTES`` input ``image``: length-prefixed binary, or base64 in JSON."""
    specs = payload["inputs"]
    names = [spec.get("name") for spec in specs]
    if names != [WORKFLOW_INPUT]:
        raise ServiceError(f"a workflow takes one input {WORKFLOW_INPUT!r} (BYTES: the encoded images); got {names}.")
    spec = specs[0]
    shape, dtype = spec.get("shape"), spec.get("datatype")
    if dtype != "BYTES":
        raise ServiceError(f"input {WORKFLOW_INPUT!r}: datatype {dtype!r}; a workflow takes BYTES (encoded images).")
    if not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
        raise ServiceError(f"input {WORKFLOW_INPUT!r}: shape must be [N] with N >= 1 images, got {shape!r}.")
    count = shape[0]
    size = _parameters(spec, f"input {WORKFLOW_INPUT!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise ServiceError(f"input {WORKFLOW_INPUT!r}: binary_data_size {size!r} is not within the binary data.")
        chunk, pos = binary[:size], 0
        images: list[bytes] = []
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise ServiceError(f"input {WORKFLOW_INPUT!r}: element {len(images)} lacks its 4-byte length.")
            (length,) = struct.unpack_from("<I", chunk, pos)
            if pos + 4 + length > len(chunk):
                raise ServiceError(f"input {WORKFLOW_INPUT!r}: element {len(images)} is shorter than its length.")
            images.append(chunk[pos + 4 : pos + 4 + length])
            pos += 4 + length
    else:
        data = spec.get("data")
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise ServiceError(
                f"input {WORKFLOW_INPUT!r}: 'data' must be a list of base64 strings (or send binary_data_size)."
            )
        try:
            images = [base64.b64decode(d, validate=True) for d in data]
        except (binascii.Error, ValueError) as exc:
            raise ServiceError(f"input {WORKFLOW_INPUT!r}: an element is not base64 ({exc}).") from None
    if len(images) != count:
        raise ServiceError(f"input {WORKFLOW_INPUT!r}: shape says {count} images, the data holds {len(images)}.")
    return images


async def _infer_workflow(request: Request, workflow: Workflow, header_length: str | None) -> Response:
    """One workflow answer per image, as the JSON ``BYTES`` output ``answer`` (logged as ``/v1/workflows``')."""
    service = service_of(request)
    version = workflow_version(workflow)
    request.state.model = {"name": workflow.name, "version": version, "arm": "workflow"}
    service.require_store()
    body = await read_body(request, service.settings.max_body_bytes)
    payload, binary = _parse(body, header_length)
    images = _images(payload, binary)
    asked = payload.get("outputs") or [{"name": WORKFLOW_OUTPUT}]
    wanted = [spec.get("name") for spec in asked]
    if wanted != [WORKFLOW_OUTPUT]:
        raise ServiceError(f"a workflow has one output {WORKFLOW_OUTPUT!r}; asked for {wanted}.")
    default_binary = bool(_parameters(payload, "the inference request").get("binary_data_output", False))
    as_binary = bool(_parameters(asked[0], f"output {WORKFLOW_OUTPUT!r}").get("binary_data", default_binary))
    routing_key = request.headers.get("x-routing-key")
    answers = []
    for data in images:
        answer = await answer_in_turn(request, workflow, data, routing_key)
        observe_steps(request, workflow.name, answer)
        answers.append(json.dumps(answer).encode())
    entry: dict[str, Any] = {"name": WORKFLOW_OUTPUT, "datatype": "BYTES", "shape": [len(answers)]}
    blob = b""
    if as_binary:
        blob = b"".join(struct.pack("<I", len(a)) + a for a in answers)
        entry["parameters"] = {"binary_data_size": len(blob)}
    else:
        entry["data"] = [a.decode() for a in answers]
    out: dict[str, Any] = {"model_name": workflow.name, "model_version": version, "outputs": [entry]}
    if "id" in payload:
        out["id"] = payload["id"]
    head = json.dumps(out).encode()
    if not blob:
        return Response(head, media_type="application/json")
    return Response(head + blob, media_type="application/octet-stream", headers={BINARY_HEADER: str(len(head))})
