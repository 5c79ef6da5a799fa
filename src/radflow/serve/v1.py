"""``/v1``: images in (multipart or raw PNG, JPEG, DICOM), findings, values or masks out; predictions, feedback.

A raw body's type is sniffed from its bytes (PNG and JPEG signatures, DICOM's ``DICM`` at offset
128): a declared image type, ``application/octet-stream``, none, or curl's ``--data-binary``
default ``application/x-www-form-urlencoded`` is accepted when the bytes are an image; any other
declared type is refused with 415 naming it.

A segmentation model answers ``structures`` (area, box and COCO RLE at the input's size); the
masks come back as PNG from the logged RLE (``/v1/predictions/{id}/mask.png``), or, for a DICOM
upload, as a DICOM SEG in place of the JSON (``?format=dicom-seg`` or ``Accept: application/dicom``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from radflow.data.decode import sniff_format
from radflow.errors import ConfigError
from radflow.inference.errors import UnsupportedMediaError
from radflow.inference.settings import ServeSettings
from radflow.runtime import InvalidInputError
from radflow.serve.common import (
    error_responses,
    json_answer,
    label_answer,
    multipart_file,
    read_body,
    service_of,
)

__all__ = ["FeedbackIn", "v1"]

_FORM = "application/x-www-form-urlencoded"
_UNTYPED = {"application/octet-stream", _FORM, ""}
"""Declared types that say nothing about an image: none, generic binary, and curl's default for ``--data-binary``."""

v1 = APIRouter(prefix="/v1", tags=["v1"])


class FeedbackIn(BaseModel):
    """Ground truth or a verdict for one prediction."""

    prediction_id: str = Field(min_length=1, max_length=64)
    labels: (
        dict[str, Literal[0, 1]]
        | dict[Literal["masks"], dict[str, dict[str, Any]]]
        | dict[Literal["boxes"], list[dict[str, Any]]]
        | None
    ) = None
    """Per-label ground truth, 0 or 1 (classification models), or ``{"masks": {STRUCTURE: COCO RLE}}``: the
    corrected masks at the input's size (segmentation models; a structure left out is not corrected), or
    ``{"boxes": [{"label", "box": [x0, y0, x1, y1]}]}``: the corrected boxes in the input's pixels (detection
    models; an empty list says there is no finding)."""
    value: float | None = None
    """The true value in the model's unit (regression models)."""
    correct: bool | None = None
    """Whether the reader agrees with the prediction as a whole."""
    reader: str | None = Field(None, max_length=200)
    comment: str | None = Field(None, max_length=5000)


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY["schema"]}, "required": ["file"]}
            },
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "application/dicom": _BINARY,
            "application/octet-stream": {**_BINARY, "description": "Any raw image; the type is sniffed."},
        },
    }
}
_DICOM = "application/dicom"
_PREDICTION_ERRORS = error_responses(404, 503)
"""An unknown (or no longer stored) prediction, or the store still opening."""


@v1.post(
    "/predict",
    summary="Score one radiograph (PNG, JPEG or DICOM) as multipart field `file` or raw body",
    description=(
        "Send `X-Routing-Key` to stick a caller (e.g. a hashed study id) to one A/B arm. A raw body's type "
        "is sniffed from its bytes: a declared image type, `application/octet-stream`, none, or curl's "
        "default `application/x-www-form-urlencoded` is accepted when the bytes are PNG, JPEG or DICOM."
    ),
    openapi_extra=_UPLOAD,
    responses={
        200: {
            "description": "The answer (findings, value or structures); a DICOM SEG when asked for one.",
            "content": {"application/json": {}, _DICOM: {"schema": {"type": "string", "format": "binary"}}},
        },
        202: {"description": "`async=true`: handed to the Kafka workers; `{id, status}`, Location of the result."},
        **error_responses(400, 413, 415, 422, 503, 504),
    },
)
async def predict(
    request: Request,
    sex: Literal["M", "F"] | None = Query(None, description="Sex for regression models (else the DICOM header)."),
    format: Literal["json", "dicom-seg"] = Query(
        "json",
        description=(
            "`dicom-seg`: a segmentation model's masks as a DICOM SEG referencing the uploaded DICOM "
            "(also asked for by `Accept: application/dicom`); the JSON answer is logged as always."
        ),
    ),
    hand_off: bool = Query(
        False,
        alias="async",
        description=(
            "`true`: send the image to the Kafka workers and answer 202 at once with the id its prediction will "
            "have (`GET /v1/predictions/{id}` once scored, or the predictions topic); X-Routing-Key must then be "
            "a sha256 hex (a hashed study id)."
        ),
    ),
) -> Response:
    service = service_of(request)
    if hand_off:
        return await _hand_off(request, sex)
    seg = format == "dicom-seg" or _accepts_dicom(request.headers.get("accept", ""))
    # Admission (503 at capacity) before the body is read, held to the answer; the service does not count it
    # again. Entered here rather than by the `admitted` dependency: a generator dependency costs every request
    # FastAPI's exit stack.
    with service.admission.enter():
        data = await _image(request, service.settings)
        if seg:
            _check_seg_request(request, data)
        answer = await service.predict(data, request.headers.get("x-routing-key"), sex)
        label_answer(request, {**answer["model"], "arm": answer["arm"]})
        if seg:
            body = await service.dicom_seg(answer, data)
            return Response(body, media_type=_DICOM, headers={"X-Prediction-Id": str(answer["id"])})
    return json_answer(answer)


async def _hand_off(request: Request, sex: str | None) -> Response:
    """``async=true``: the upload goes to the images topic (``app.state.kafka``, a radflow.kafka.KafkaHandoff)."""
    handoff = getattr(request.app.state, "kafka", None)
    if handoff is None:
        raise ConfigError(
            "async=true hands the image to Kafka workers, and this server has no Kafka configured "
            "(RADFLOW_KAFKA_BOOTSTRAP); drop async=true for the answer now."
        )
    service = service_of(request)
    with service.admission.enter():
        data = await _image(request, service.settings)
        prediction_id = await handoff.submit(data, request.headers.get("x-routing-key"), sex)
    answer = json_answer({"id": prediction_id, "status": "queued"}, 202)
    answer.headers["Location"] = f"/v1/predictions/{prediction_id}"
    return answer


def _accepts_dicom(accept: str) -> bool:
    """Whether an Accept header asks for DICOM rather than JSON (it names application/dicom and not JSON)."""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return _DICOM in types and "application/json" not in types


def _check_seg_request(request: Request, data: bytes) -> None:
    """A SEG needs a DICOM upload (415 otherwise) and a served model that answers masks (422 otherwise)."""
    fmt = sniff_format(data)
    if fmt != "dicom":
        got = f"a {fmt.upper()} image" if fmt else "not an image"
        raise UnsupportedMediaError(
            f"a DICOM SEG answer references its source DICOM, and the upload is {got}; send the DICOM file, "
            "or drop format=dicom-seg / Accept: application/dicom for the JSON answer with its RLE masks."
        )
    arms = service_of(request).require_router().arms()
    if not any(a.model.dense for a in arms):
        names = ", ".join(f"{a.name} ({a.model.task})" for a in arms)
        raise InvalidInputError(f"format=dicom-seg is for segmentation models; this server serves {names}.")


async def _image(request: Request, s: ServeSettings) -> bytes:
    """The image of a ``/v1/predict`` request: its multipart ``file`` field or its raw body (type sniffed)."""
    body = await read_body(request, s.max_body_bytes)
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared == "multipart/form-data":
        upload = multipart_file(body, request.headers["content-type"])
        if upload is None:
            raise InvalidInputError("a multipart upload needs the image in a file field named 'file'.")
        return upload
    if declared in s.allowed_content_types or declared in _UNTYPED:
        if declared == _FORM and sniff_format(body) is None:
            raise UnsupportedMediaError(
                f"Content-Type {declared!r} is a form and the body is not a PNG, JPEG or DICOM file; send the "
                "image with curl --data-binary @file (any type) or -F file=@file."
            )
        return body
    raise UnsupportedMediaError(
        f"Content-Type {declared!r} is not accepted; send {', '.join(s.allowed_content_types)} "
        "or multipart/form-data with a 'file' field."
    )


@v1.get("/predictions/{prediction_id}", summary="A logged prediction", responses=_PREDICTION_ERRORS)
async def get_prediction(request: Request, prediction_id: str) -> Response:
    return json_answer(await service_of(request).get_prediction(prediction_id))


@v1.get(
    "/predictions/{prediction_id}/heatmap.png",
    summary="Class activation map of one label over the input",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The CAM blended over the stored input."},
        **error_responses(400, 404, 422, 503),
    },
)
async def heatmap(request: Request, prediction_id: str, label: str = Query(..., min_length=1)) -> Response:
    png = await service_of(request).heatmap(prediction_id, label)
    return Response(png, media_type="image/png")


@v1.get(
    "/predictions/{prediction_id}/mask.png",
    summary="A segmentation prediction's mask as PNG, from its logged RLE",
    description=(
        "`label=STRUCTURE`: that structure, black (0) and white (255). No label: every structure in one palette "
        "PNG whose pixel value holds the structure bits (bit k = the k-th structure of the answer, overlaps kept)."
    ),
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The mask at the input's original size."},
        **error_responses(404, 422, 503),
    },
)
async def mask_png(
    request: Request,
    prediction_id: str,
    label: str | None = Query(None, min_length=1, description="One structure; all when omitted."),
) -> Response:
    png = await service_of(request).mask_png(prediction_id, label)
    return Response(png, media_type="image/png")


@v1.post(
    "/feedback",
    status_code=201,
    summary="Ground truth or verdict for a prediction (durable before 201)",
    responses=error_responses(400, 404, 422, 503),
)
async def feedback(request: Request, body: FeedbackIn) -> JSONResponse:
    saved = await service_of(request).add_feedback(
        body.prediction_id,
        labels={str(k): v for k, v in body.labels.items()} if body.labels else None,
        value=body.value,
        correct=body.correct,
        reader=body.reader,
        comment=body.comment,
    )
    return JSONResponse(saved, status_code=201)


@v1.get(
    "/monitoring",
    summary="Drift against each model version's reference, online evaluation, recent alerts",
    responses=error_responses(422, 503),
)
async def monitoring(request: Request, alerts: int = Query(20, ge=0, le=500)) -> Response:
    """Drift is scored on the current window when asked (and every ``drift_interval_s`` in the background).

    Shape (stable; the dashboard and the simulator read it)::

        {
          "drift": {
            "enabled": true,                      # false (and nothing else) when RADFLOW_DRIFT=false
            "models": {
              "MODEL/VERSION": {
                "model": str, "version": str,
                "status": "ok" | "alert" | "collecting" | "no_reference",
                "reason": str | null,             # e.g. why there is no reference
                "observed": int,                  # predictions seen since load
                "window": {"size": int, "capacity": int, "min": int},
                "thresholds": {"psi", "ks", "embedding", "min_window", "rearm"},
                "alert": bool,                    # any score at/above its threshold now
                "scores": [{"feature": "intensity_mean" | ... | "score:LABEL" | "value" | "embedding" | "view",
                            "group": "input" | "output", "statistic": "psi" | "ks" | "mean_distance",
                            "score": float, "threshold": float, "alert": bool,
                            "pvalue"?: float, "live_mean"?: float, "source"?: str}]
              }
            }
          },
          "online": {...},                        # radflow.monitor.online.online_report (absent if unavailable)
          "alerts": [{"id", "created_at", "kind": "drift" | "auto_rule", "model_name", "model_version",
                      "feature", "statistic", "score", "threshold", "message", "details"}]   # newest first
        }
    """
    # orjson writes an undefined statistic (a window of empty masks has no mask confidence) as null.
    return json_answer(await service_of(request).monitoring(alerts))
