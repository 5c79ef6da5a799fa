"""Label Studio's ML-backend protocol, served from the inference core: live pre-annotations and annotation events.

Connect it in Label Studio (project Settings -> Model, or ``radflow annotate push --ml-backend``) with the URL
``http://HOST:PORT/label-studio/``; Label Studio appends the route names. The bodies follow what Label Studio
1.23 sends (``label_studio/ml/api_connector.py``) and what label-studio-ml-backend answers
(``label_studio_ml/api.py``):

* ``GET /label-studio/health`` -> ``{"status": "UP", "model_class", "model_version"}``;
* ``POST /label-studio/setup`` ``{project, schema, hostname, access_token, extra_params}`` ->
  ``{"model_version": "NAME/VERSION"}``; a ``schema`` (labelling config) that does not fit the served model's
  task is refused (400, naming the controls that differ), so Label Studio marks the backend as in error;
* ``POST /label-studio/predict`` ``{tasks: [{id, data: {image}}], project, label_config, params}`` ->
  ``{"results": [{"result": [...], "score", "model_version"}], "model_version"}``, one per task in order: each image
  goes through ``InferenceService.predict`` (logged like any served prediction). ``data.image`` is a data URI
  (what ``radflow annotate push`` sends) or a URL: one under the ``hostname`` Label Studio gave at setup (or a
  path on it, ``/data/upload/...``) is fetched with its ``access_token``; other hosts are refused;
* ``POST /label-studio/webhook`` ``{action, project, task, annotation}`` -> 201 (Label Studio registers this
  webhook, for every action, when the backend is connected): ``ANNOTATION_CREATED`` /
  ``ANNOTATION_UPDATED`` of a task ``radflow annotate push`` made imports that annotation as feedback at once
  (:func:`radflow.annotate.pull.import_annotations`, the pull's own checks; an annotation the store already
  holds is ``unchanged``, not a second row); other events are acknowledged.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated, Any
from urllib.parse import urljoin, urlparse

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from radflow.annotate.config import IMAGE, check_config
from radflow.annotate.push import PREDICTION_KEY, task_config
from radflow.annotate.results import prediction_result
from radflow.runtime import InvalidInputError
from radflow.serve.common import error_responses, json_answer, service_of

__all__ = ["PREFIX", "ml_backend"]

log = logging.getLogger(__name__)

PREFIX = "/label-studio"
FETCH_TIMEOUT_S = 30.0
ml_backend = APIRouter(prefix=PREFIX, tags=["label-studio"])


class SetupIn(BaseModel):
    project: str | int | None = None
    schema_: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None
    model_config = {"populate_by_name": True, "extra": "allow"}


class PredictIn(BaseModel):
    tasks: list[dict[str, Any]] = Field(default_factory=list)
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None
    model_config = {"extra": "allow"}


class WebhookIn(BaseModel):
    action: str = ""
    project: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    annotation: dict[str, Any] | None = None
    model_config = {"extra": "allow"}


def _champion(request: Request) -> Any:
    return service_of(request).require_router().champion.loaded


def _version(loaded: Any) -> str:
    return f"{loaded.name}/{loaded.version}"


def _hosts(request: Request) -> dict[str, tuple[str, str]]:
    """Label Studio hosts that called setup, by project: (hostname, access token)."""
    hosts: dict[str, tuple[str, str]] | None = getattr(request.app.state, "label_studio_hosts", None)
    if hosts is None:
        hosts = {}
        request.app.state.label_studio_hosts = hosts
    return hosts


def _project_key(project: str | int | None) -> str:
    return str(project or "").split(".")[0]  # Label Studio sends "<id>.<created timestamp>"


@ml_backend.get("/health", summary="Label Studio ML backend: health", responses=error_responses(503))
async def health(request: Request) -> Response:
    loaded = _champion(request)
    return json_answer({"status": "UP", "model_class": "radflow", "model_version": _version(loaded)})


@ml_backend.post("/setup", summary="Label Studio ML backend: setup", responses=error_responses(400, 422, 503))
async def setup(request: Request, body: Annotated[SetupIn | None, Body()] = None) -> Response:
    body = body or SetupIn()
    loaded = _champion(request)
    if body.schema_:
        check_config(body.schema_, task_config(loaded.model), f"{_project_key(body.project) or '?'}")
    if body.hostname:
        _hosts(request)[_project_key(body.project)] = (body.hostname.rstrip("/"), body.access_token or "")
    return json_answer({"model_version": _version(loaded)})


def _decode_data_uri(ref: str, where: str) -> bytes:
    head, _, payload = ref.partition(",")
    if ";base64" not in head:
        raise InvalidInputError(f"{where}: data.{IMAGE} is a data URI without base64 encoding.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{where}: data.{IMAGE} is not valid base64.") from None


async def _image_bytes(request: Request, task: dict[str, Any], project: str | int | None) -> bytes:
    import httpx

    where = f"task {task.get('id')}"
    ref = (task.get("data") or {}).get(IMAGE)
    if not isinstance(ref, str) or not ref:
        raise InvalidInputError(f"{where} has no data.{IMAGE}.")
    if ref.startswith("data:"):
        return _decode_data_uri(ref, where)
    known = _hosts(request).get(_project_key(project))
    if known is None:
        raise InvalidInputError(
            f"{where}: data.{IMAGE} is a URL, and Label Studio has not called /setup for project {project} (its "
            "hostname and token say where images may be fetched)."
        )
    hostname, token = known
    url = urljoin(hostname + "/", ref)
    if urlparse(url).netloc != urlparse(hostname).netloc:
        raise InvalidInputError(f"{where}: data.{IMAGE} points outside Label Studio ({urlparse(url).netloc}).")
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as http:
        try:
            answer = await http.get(url, headers={"Authorization": f"Token {token}"} if token else {})
        except httpx.HTTPError as exc:
            raise InvalidInputError(f"{where}: cannot fetch its image from Label Studio: {exc}") from None
    if answer.status_code != 200:
        raise InvalidInputError(f"{where}: Label Studio answered {answer.status_code} for its image.")
    return answer.content


def _size(data: bytes) -> tuple[int, int]:
    from radflow.data.decode import decode_image

    pixels = decode_image(data, name="label-studio task").pixels
    return int(pixels.shape[0]), int(pixels.shape[1])


@ml_backend.post("/predict", summary="Label Studio ML backend: predict", responses=error_responses(400, 422, 503))
async def predict(request: Request, body: Annotated[PredictIn | None, Body()] = None) -> Response:
    body = body or PredictIn()
    service = service_of(request)
    loaded = _champion(request)
    config = task_config(loaded.model)
    if body.label_config:
        check_config(body.label_config, config, _project_key(body.project) or "?")
    results = []
    for task in body.tasks:
        data = await _image_bytes(request, task, body.project)
        answer = await service.predict(data)
        version = f"{answer['model']['name']}/{answer['model']['version']}"
        results.append(
            {
                "result": prediction_result(answer, config, _size(data)),
                "score": _confidence(answer),
                "model_version": version,
            }
        )
    return json_answer({"results": results, "model_version": _version(loaded)})


def _confidence(answer: dict[str, Any]) -> float | None:
    """How sure the answer is, for Label Studio's score ordering: the mean distance of its findings from their
    thresholds, doubled (0 = every finding on its threshold); the mean box score for boxes."""
    findings = [f for f in answer.get("findings") or [] if f.get("threshold") is not None]
    if findings:
        return round(sum(2 * abs(f["probability"] - f["threshold"]) for f in findings) / len(findings), 6)
    boxes = answer.get("boxes") or []
    if boxes:
        return round(sum(float(b["score"]) for b in boxes) / len(boxes), 6)
    return None


@ml_backend.post(
    "/webhook", summary="Label Studio ML backend: webhook", status_code=201, responses=error_responses(400, 422, 503)
)
async def webhook(request: Request, body: Annotated[WebhookIn | None, Body()] = None) -> Response:
    body = body or WebhookIn()
    from radflow.annotate.pull import import_annotations

    if body.action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") or not body.task or not body.annotation:
        return json_answer({"action": body.action, "imported": 0, "status": "ignored"}, 201)
    if not (body.task.get("data") or {}).get(PREDICTION_KEY):
        return json_answer({"action": body.action, "imported": 0, "status": "not a radflow task"}, 201)
    service = service_of(request)
    config = task_config(_champion(request).model)
    task = {**body.task, "annotations": [body.annotation]}
    imported, already, refused, _ = await import_annotations(service, [task], config)
    if refused:
        log.warning("Label Studio annotation not imported: %s", refused[0]["reason"])
    return json_answer({"action": body.action, "imported": imported, "unchanged": already, "refused": refused}, 201)
