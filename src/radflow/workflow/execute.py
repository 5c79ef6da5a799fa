"""Running a loaded workflow on one image, torch-free: :func:`run_workflow`.

Steps run in the workflow's checked order, each on its inputs' outputs: a model step through its
:class:`~radflow.runtime.RadflowModel` (on crops, in batches of ``batch_size`` after each crop's own
preprocessing), glue through :mod:`radflow.workflow.glue`. Boxes and cuts are in the input's
original pixels, as a detection answer's are; a crop step with ``levels`` lists its crops top to bottom,
each with its ``level`` (and so does every per-crop output after it). A crop step that finds nothing is
an answer too: the steps after it get no crops, and the answer says which step found nothing
(``found: false``).

A server that logs the answer passes a :class:`Trace`: each model step then leaves a :class:`ModelRun`
there (the model-size pixels it took, its raw outputs and answers, and the extra graph outputs the trace
asked for, such as the embedding drift needs), from the same ONNX Runtime call that made the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from radflow.data.decode import decode_image
from radflow.data.decoded import DecodedImage
from radflow.runtime import Prediction, RadflowModel, sex_feature
from radflow.workflow.glue import (
    Crop,
    aggregate_findings,
    aggregate_values,
    crop_boxes,
    crop_masks,
    name_levels,
    resize_crops,
)
from radflow.workflow.graph import IMAGE, Step, Workflow

if TYPE_CHECKING:
    from radflow.modelref import ResolvedModel

__all__ = ["WORKFLOW_ARM", "WORKFLOW_CHALLENGER_ARM", "ModelRun", "Trace", "crop_location", "run_workflow"]

WORKFLOW_ARM = "workflow"
"""The ``arm`` of a workflow step's logged answer: apart from the service's own champion and challenger, whose
online comparison (:func:`radflow.monitor.comparison.compare`) must not pair a step's model with them."""
WORKFLOW_CHALLENGER_ARM = "workflow-challenger"
"""The ``arm`` of a step's answer given by its challenger (``challenger:``)."""


@dataclass
class ModelRun:
    """One model step as it ran on one request: what a server logs, meters and feeds to drift."""

    step: str
    model: RadflowModel
    resolved: ResolvedModel | None
    arm: str
    """The logged arm (:data:`WORKFLOW_ARM`, :data:`WORKFLOW_CHALLENGER_ARM` when the step's challenger ran)."""
    pixels: np.ndarray
    """``(N, S, S)`` ``uint8``: the model-size inputs, one per image or crop."""
    scores: np.ndarray
    """The score output, one row per input."""
    extra: dict[str, np.ndarray]
    """The other graph outputs the trace asked for (``Trace.fetch``), by name."""
    predictions: list[Prediction]
    crops: list[Crop] | None
    """The crops the inputs were cut from (None: the whole image)."""
    latency_ms: float = 0.0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    """Each prediction's JSON as logged (``Prediction.to_dict``, made once for the answer and the log), a crop's
    with ``crop``: where it was cut and for what (:func:`crop_location`)."""


@dataclass
class Trace:
    """Collects each model step's :class:`ModelRun`; ``fetch(model)`` names extra outputs to run with the scores."""

    fetch: Callable[[RadflowModel], Sequence[str]] = lambda _model: ()
    runs: list[ModelRun] = field(default_factory=list)
    image: DecodedImage | None = None
    """The request's decoded image."""


def _run_model(
    model: RadflowModel, pixels: np.ndarray, extra: np.ndarray | None, trace: Trace | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(scores, extra outputs) of model-size ``pixels`` ``(N, S, S)``; the extras only when tracing."""
    fetched = [n for n in (trace.fetch(model) if trace is not None else ()) if n != model.meta.output]
    outs = model.run_outputs(pixels, [model.meta.output, *fetched], extra)
    return outs[0], dict(zip(fetched, outs[1:], strict=True))


def _chosen(step: Step, challenger: bool) -> tuple[RadflowModel, ResolvedModel | None, str]:
    """(model, its resolution, logged arm) of a model step: its challenger when routed there."""
    if challenger and step.challenger is not None:
        return step.challenger, step.challenger_resolved, WORKFLOW_CHALLENGER_ARM
    assert step.model is not None
    return step.model, step.resolved, WORKFLOW_ARM


def _predict_image(
    model: RadflowModel, image: DecodedImage, step: Step, trace: Trace | None, challenger: bool
) -> Prediction:
    """The model's answer for the whole image at its original size (as ``RadflowModel.predict_bytes``)."""
    extra = sex_feature([image.meta.get("sex", "")]) if model.needs_sex else None
    pixels = model.prepare(image)[None]
    scores, fetched = _run_model(model, pixels, extra, trace)
    spacing = image.meta.get("spacing") if model.dense else None
    height, width = image.pixels.shape
    prediction = model.to_prediction(scores[0], (int(height), int(width)), spacing)
    if trace is not None:
        trace.runs.append(
            ModelRun(step.name, model, *_chosen(step, challenger)[1:], pixels, scores, fetched, [prediction], None)
        )
    return prediction


def _predict_crops(
    model: RadflowModel, crops: list[Crop], image: DecodedImage, step: Step, trace: Trace | None, challenger: bool
) -> list[Prediction]:
    """One answer per crop, ``batch_size`` crops per ONNX Runtime call, each crop preprocessed on its own."""
    out: list[Prediction] = []
    batch_size = step.config.batch_size
    runs: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        pixels = np.stack([model.prepare(np.asarray(c.pixels)) for c in chunk])
        extra = sex_feature([image.meta.get("sex", "")] * len(chunk)) if model.needs_sex else None
        scores, fetched = _run_model(model, pixels, extra, trace)
        out.extend(model.to_prediction(row) for row in scores)
        runs.append((pixels, scores, fetched))
    if trace is not None and runs:
        pixels = np.concatenate([r[0] for r in runs])
        scores = np.concatenate([r[1] for r in runs])
        fetched = {n: np.concatenate([r[2][n] for r in runs]) for n in runs[0][2]}
        resolved, arm = _chosen(step, challenger)[1:]
        trace.runs.append(ModelRun(step.name, model, resolved, arm, pixels, scores, fetched, out, crops))
    return out


def crop_location(crop: Crop) -> dict[str, Any]:
    """Where a crop was cut and for what (its ``level`` when named): what the answer lists beside its results."""
    level = {"level": crop.source["level"]} if "level" in crop.source else {}
    return {**level, "box": crop.box, "source": crop.source}


def _run_step(
    step: Step, values: dict[str, Any], image: DecodedImage, trace: Trace | None, challenger: bool = False
) -> tuple[Any, dict[str, Any], str | None]:
    """(value for later steps, JSON output, what was not found or None) of one step."""
    c = step.config
    source = values[step.inputs["input"]]
    if step.model is not None:
        traced = len(trace.runs) if trace is not None else 0
        if not step.kind.per_crop:
            prediction = _predict_image(_chosen(step, challenger)[0], source, step, trace, challenger)
            outputs = [prediction.to_dict()]
            value: Any = prediction
            output = outputs[0]
        else:
            predictions = _predict_crops(_chosen(step, challenger)[0], source, image, step, trace, challenger)
            outputs = [p.to_dict() for p in predictions]
            value = list(zip(source, predictions, strict=True))
            output = {"crops": [{**crop_location(cr), **d} for cr, d in zip(source, outputs, strict=True)]}
            outputs = [{**d, "crop": crop_location(cr)} for cr, d in zip(source, outputs, strict=True)]
        for run in trace.runs[traced:] if trace is not None else ():
            run.outputs = outputs
        return value, output, None
    if c.crop is not None:
        pixels = values[step.inputs["image"]].pixels
        if c.crop == "box":
            crops = crop_boxes(pixels, source.boxes or [], c.margin, c.labels, c.min_score)
            if c.levels is not None:
                crops = name_levels(crops, c.levels, c.levels_from)
        else:
            crops = crop_masks(pixels, source.structures or [], c.margin, c.labels)
        missing = None
        if not crops:
            what = "box" if c.crop == "box" else "structure"
            which = f" of {', '.join(c.labels)}" if c.labels else ""
            score = f" scoring {c.min_score} or more" if c.min_score else ""
            missing = (
                f"step {c.name!r} found no {what}{which}{score} in the image (from step {step.inputs['input']!r})."
            )
        return crops, {"count": len(crops), "crops": [crop_location(cr) for cr in crops]}, missing
    if c.resize is not None:
        crops = resize_crops(source, c.resize)
        return crops, {"count": len(crops), "size": c.resize}, None
    assert c.aggregate is not None
    pairs = source
    crops_out = [{**crop_location(cr), **p.to_dict()} for cr, p in pairs]
    if step.kind.what == "findings":
        findings = aggregate_findings([[f.to_dict() for f in p.findings or []] for _, p in pairs], c.aggregate)
        return findings, {"method": c.aggregate, "findings": findings, "crops": crops_out}, None
    value = aggregate_values([float(p.value) for _, p in pairs if p.value is not None], c.aggregate)
    unit = next((p.unit for _, p in pairs), None)
    return value, {"method": c.aggregate, "prediction": {"value": value, "unit": unit}, "crops": crops_out}, None


def run_workflow(
    workflow: Workflow,
    image: bytes | DecodedImage,
    name: str = "<upload>",
    *,
    trace: Trace | None = None,
    challengers: Collection[str] = (),
) -> dict[str, Any]:
    """The workflow's answer for one PNG/JPEG/DICOM image (bytes or already decoded); ``trace`` collects the
    model steps' runs (:class:`Trace`); the steps named in ``challengers`` run their challenger model (a
    server routes them: :func:`radflow.inference.routing.takes_challenger`), each other model step its model.

    Shape::

        {"workflow": str, "size": [h, w], "output": STEP, "answer": <the output step's output>,
         "found": bool, "message": str | null,        # which step found nothing, when one did
         "steps": [{"name", "action": "model" | "crop" | "resize" | "aggregate", "kind": str,
                    "model"?: {"name", "version", "alias", "uri"}, "arm"?: "champion" | "challenger",
                    "output": {...}, "latency_ms": float}],
         "latency_ms": {"decode": float, "steps": float, "total": float}}
    """
    start = time.perf_counter()
    if isinstance(image, bytes):
        limits: dict[str, Any] = dict(workflow.decode_limits)
        decoded = decode_image(image, name=name, **limits)
    else:
        decoded = image
    decoded_at = time.perf_counter()
    if trace is not None:
        trace.image = decoded
    values: dict[str, Any] = {IMAGE: decoded}
    steps: list[dict[str, Any]] = []
    message: str | None = None
    for step in workflow.steps:
        began = time.perf_counter()
        traced = len(trace.runs) if trace is not None else 0
        challenger = step.name in challengers and step.challenger is not None
        value, output, missing = _run_step(step, values, decoded, trace, challenger)
        values[step.name] = value
        entry: dict[str, Any] = {"name": step.name, "action": step.action, "kind": str(step.kind)}
        if step.model is not None:
            r = _chosen(step, challenger)[1]
            if r is not None:
                entry["model"] = {"name": r.name, "version": r.version, "alias": r.alias, "uri": r.uri}
            entry["arm"] = "challenger" if challenger else "champion"
        entry["output"] = output
        entry["latency_ms"] = round((time.perf_counter() - began) * 1000, 3)
        for run in trace.runs[traced:] if trace is not None else ():
            run.latency_ms = entry["latency_ms"]
        steps.append(entry)
        if missing is not None and message is None:
            message = missing
    done = time.perf_counter()
    height, width = decoded.pixels.shape
    return {
        "workflow": workflow.name,
        "size": [int(height), int(width)],
        "output": workflow.output,
        "answer": next(s["output"] for s in steps if s["name"] == workflow.output),
        "found": message is None,
        "message": message,
        "steps": steps,
        "latency_ms": {
            "decode": round((decoded_at - start) * 1000, 3),
            "steps": round((done - decoded_at) * 1000, 3),
            "total": round((done - start) * 1000, 3),
        },
    }
