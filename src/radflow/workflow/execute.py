"""Running a loaded workflow on one image, torch-free: :func:`run_workflow`.

Steps run in the workflow's checked order, each on its inputs' outputs: a model step through its
:class:`~radflow.runtime.RadflowModel` (on crops, in batches of ``batch_size`` after each crop's own
preprocessing), glue through :mod:`radflow.workflow.glue`. Boxes and cuts are in the input's
original pixels, as a detection answer's are; a crop step with ``levels`` lists its crops top to bottom,
each with its ``level`` (and so does every per-crop output after it). A crop step that finds nothing is
an answer too: the steps after it get no crops, and the answer says which step found nothing
(``found: false``).
"""

from __future__ import annotations

import time
from typing import Any

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

__all__ = ["run_workflow"]


def _predict_image(model: RadflowModel, image: DecodedImage) -> Prediction:
    """The model's answer for the whole image at its original size (as ``RadflowModel.predict_bytes``)."""
    extra = sex_feature([image.meta.get("sex", "")]) if model.needs_sex else None
    scores, _ = model.run(model.prepare(image)[None], extra, cam=False)
    spacing = image.meta.get("spacing") if model.dense else None
    height, width = image.pixels.shape
    return model.to_prediction(scores[0], (int(height), int(width)), spacing)


def _predict_crops(model: RadflowModel, crops: list[Crop], image: DecodedImage, batch_size: int) -> list[Prediction]:
    """One answer per crop, ``batch_size`` crops per ONNX Runtime call, each crop preprocessed on its own."""
    out: list[Prediction] = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        pixels = np.stack([model.prepare(np.asarray(c.pixels)) for c in chunk])
        extra = sex_feature([image.meta.get("sex", "")] * len(chunk)) if model.needs_sex else None
        scores, _ = model.run(pixels, extra, cam=False)
        out.extend(model.to_prediction(row) for row in scores)
    return out


def _where(crop: Crop) -> dict[str, Any]:
    level = {"level": crop.source["level"]} if "level" in crop.source else {}
    return {**level, "box": crop.box, "source": crop.source}


def _run_step(step: Step, values: dict[str, Any], image: DecodedImage) -> tuple[Any, dict[str, Any], str | None]:
    """(value for later steps, JSON output, what was not found or None) of one step."""
    c = step.config
    source = values[step.inputs["input"]]
    if step.model is not None:
        if not step.kind.per_crop:
            prediction = _predict_image(step.model, source)
            return prediction, prediction.to_dict(), None
        predictions = _predict_crops(step.model, source, image, c.batch_size)
        pairs = list(zip(source, predictions, strict=True))
        return pairs, {"crops": [{**_where(cr), **p.to_dict()} for cr, p in pairs]}, None
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
        return crops, {"count": len(crops), "crops": [_where(cr) for cr in crops]}, missing
    if c.resize is not None:
        crops = resize_crops(source, c.resize)
        return crops, {"count": len(crops), "size": c.resize}, None
    assert c.aggregate is not None
    pairs = source
    crops_out = [{**_where(cr), **p.to_dict()} for cr, p in pairs]
    if step.kind.what == "findings":
        findings = aggregate_findings([[f.to_dict() for f in p.findings or []] for _, p in pairs], c.aggregate)
        return findings, {"method": c.aggregate, "findings": findings, "crops": crops_out}, None
    value = aggregate_values([float(p.value) for _, p in pairs if p.value is not None], c.aggregate)
    unit = next((p.unit for _, p in pairs), None)
    return value, {"method": c.aggregate, "prediction": {"value": value, "unit": unit}, "crops": crops_out}, None


def run_workflow(workflow: Workflow, image: bytes | DecodedImage, name: str = "<upload>") -> dict[str, Any]:
    """The workflow's answer for one PNG/JPEG/DICOM image (bytes or already decoded).

    Shape::

        {"workflow": str, "size": [h, w], "output": STEP, "answer": <the output step's output>,
         "found": bool, "message": str | null,        # which step found nothing, when one did
         "steps": [{"name", "action": "model" | "crop" | "resize" | "aggregate", "kind": str,
                    "model"?: {"name", "version", "alias", "uri"}, "output": {...}, "latency_ms": float}],
         "latency_ms": {"decode": float, "steps": float, "total": float}}
    """
    start = time.perf_counter()
    if isinstance(image, bytes):
        limits: dict[str, Any] = dict(workflow.decode_limits)
        decoded = decode_image(image, name=name, **limits)
    else:
        decoded = image
    decoded_at = time.perf_counter()
    values: dict[str, Any] = {IMAGE: decoded}
    steps: list[dict[str, Any]] = []
    message: str | None = None
    for step in workflow.steps:
        began = time.perf_counter()
        value, output, missing = _run_step(step, values, decoded)
        values[step.name] = value
        entry: dict[str, Any] = {"name": step.name, "action": step.action, "kind": str(step.kind)}
        if step.resolved is not None:
            r = step.resolved
            entry["model"] = {"name": r.name, "version": r.version, "alias": r.alias, "uri": r.uri}
        entry["output"] = output
        entry["latency_ms"] = round((time.perf_counter() - began) * 1000, 3)
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
