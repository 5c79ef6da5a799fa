"""radflow answers as Label Studio results (pre-annotations), and Label Studio annotations as radflow feedback.

Both directions go through the formats radflow already reads: brush masks through
:mod:`radflow.data.maskfiles` (Label Studio's brush RLE, both ways) and :mod:`radflow.data.rle` (the COCO RLE
feedback holds), rectangles through :func:`radflow.data.boxfiles.read_label_studio_boxes` (the ``label-studio``
ingest format's reader: percent of ``original_width``/``original_height`` to pixels, a rotated rectangle
refused). The feedback is what ``POST /v1/feedback`` takes for the same answer, so the task kind checks it
(:func:`radflow.tasks.validate_feedback`) and ``radflow feedback export`` / ``radflow loop`` read it unchanged.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radflow.annotate.config import (
    ABSENT,
    BOX_CONTROL,
    CLASS_CONTROL,
    IMAGE,
    MASK_CONTROL,
    PRESENT,
    VALUE_CONTROL,
    LabelConfig,
)
from radflow.errors import DataError

__all__ = [
    "AnnotationError",
    "Feedback",
    "annotation_boxes",
    "annotation_feedback",
    "annotation_masks",
    "prediction_result",
]


class AnnotationError(DataError):
    """One annotation radflow cannot take (named by task and annotation); the others are still imported."""


@dataclass
class Feedback:
    """What one annotation says, in ``POST /v1/feedback`` terms."""

    labels: dict[str, Any] | None = None
    value: float | None = None


def _rectangle(box: list[float], label: str, height: int, width: int, score: float | None) -> dict[str, Any]:
    x0, y0, x1, y1 = (float(v) for v in box)
    result: dict[str, Any] = {
        "from_name": BOX_CONTROL,
        "to_name": IMAGE,
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100 * x0 / width,
            "y": 100 * y0 / height,
            "width": 100 * (x1 - x0) / width,
            "height": 100 * (y1 - y0) / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }
    if score is not None:
        result["score"] = float(score)
    return result


def prediction_result(answer: dict[str, Any], config: LabelConfig, size: tuple[int, int]) -> list[dict[str, Any]]:
    """A radflow answer as the ``result`` of a Label Studio prediction in ``config`` (``size``: the image's
    (height, width)). A finding the model never learned (``positive`` None) is left for the expert."""
    from radflow.data.maskfiles import label_studio_result
    from radflow.data.rle import decode_rle

    height, width = size
    task = config.task
    out: list[dict[str, Any]] = []
    if task == "multilabel":
        by_label = {label: name for name, label in config.findings.items()}
        for finding in answer.get("findings") or []:
            name = by_label.get(finding["label"])
            if name is None or finding.get("positive") is None:
                continue
            choice = PRESENT if finding["positive"] else ABSENT
            out.append({"from_name": name, "to_name": IMAGE, "type": "choices", "value": {"choices": [choice]}})
    elif task == "multiclass":
        findings = answer.get("findings") or []
        if findings:
            best = max(findings, key=lambda f: (bool(f.get("positive")), float(f.get("probability", 0))))
            out.append(
                {"from_name": CLASS_CONTROL, "to_name": IMAGE, "type": "choices", "value": {"choices": [best["label"]]}}
            )
    elif task == "regression":
        value = (answer.get("prediction") or {}).get("value")
        if value is not None:
            out.append(
                {"from_name": VALUE_CONTROL, "to_name": IMAGE, "type": "number", "value": {"number": round(value, 1)}}
            )
    elif task == "segmentation":
        for structure in answer.get("structures") or []:
            mask = decode_rle(structure["rle"], f"structure {structure['structure']!r} of the answer")
            if mask.any():
                out.append(label_studio_result(mask, structure["structure"], from_name=MASK_CONTROL, to_name=IMAGE))
    elif task == "detection":
        for box in answer.get("boxes") or []:
            out.append(_rectangle(box["box"], box["label"], height, width, box.get("score")))
    return out


def _choice(result: dict[str, Any], where: str) -> str:
    choices = (result.get("value") or {}).get("choices") or []
    if len(choices) != 1:
        raise AnnotationError(f"{where}: {result.get('from_name')!r} needs exactly one choice, got {choices!r}")
    return str(choices[0])


def annotation_masks(
    results: list[dict[str, Any]], structures: list[str], size: tuple[int, int], where: str
) -> dict[str, Any]:
    """A brush annotation as feedback masks ``{structure: COCO RLE}`` at the image's ``size`` (height, width).

    Every structure is answered: one the expert drew nothing of is an empty mask (absent), since the config
    offers all of them. A mask of another size than the image is refused, naming both sizes.
    """
    from radflow.data.maskfiles import label_studio_masks
    from radflow.data.rle import encode_rle

    brushes = [r for r in results if str(r.get("type", "")).lower() == "brushlabels"]
    if not brushes:
        return {s: encode_rle(np.zeros(size, dtype=bool)) for s in structures}
    for result in brushes:
        got = (int(result.get("original_height", -1)), int(result.get("original_width", -1)))
        if got != tuple(size):
            raise AnnotationError(
                f"{where}: the brush mask is {got[1]}x{got[0]} (width x height), but the image is "
                f"{size[1]}x{size[0]}; it was drawn on another image size and is not imported"
            )
    try:
        masks = label_studio_masks(brushes, list(structures))
    except DataError as exc:
        raise AnnotationError(f"{where}: {exc}") from None
    return {s: encode_rle(masks[k]) for k, s in enumerate(structures)}


def annotation_boxes(
    tasks: list[dict[str, Any]], labels: list[str]
) -> tuple[dict[int, dict[str, list[dict[str, Any]]]], dict[int, list[str]]]:
    """Rectangles of exported tasks as corrected boxes per task and reader, with the reader's own rule.

    Read by :func:`radflow.data.boxfiles.read_label_studio_boxes` (the ``label-studio`` ingest format), so a box
    means here what it means to ingest. Returns ``({task id: {reader: [{label, box}]}}, {task id: [errors]}``.
    """
    from radflow.data.boxfiles import read_label_studio_boxes

    keyed = []
    for task in tasks:
        anns = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        # a reader per annotation: the reader keeps every annotation's boxes apart (several by one user too)
        anns = [{**a, "completed_by": f"{a.get('completed_by', '')}#{a.get('id', k)}"} for k, a in enumerate(anns)]
        keyed.append({"data": {"image": f"task-{task['id']}"}, "annotations": anns})
    with tempfile.TemporaryDirectory(prefix="radflow-ls-") as tmp:
        path = Path(tmp) / "export.json"
        path.write_text(json.dumps(keyed))
        images, _labels, _multi = read_label_studio_boxes(path, labels)
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    errors: dict[int, list[str]] = {}
    for task in tasks:
        image = images.get(f"task-{task['id']}")
        if image is None:
            continue
        readers: dict[str, list[dict[str, Any]]] = {r: [] for r in image.readers} or {"": []}
        for box in image.boxes:
            readers.setdefault(box.reader, []).append({"label": box.label, "box": [box.x0, box.y0, box.x1, box.y1]})
        out[int(task["id"])] = readers
        if image.errors:
            errors[int(task["id"])] = [message for _row, message in image.errors]
    return out, errors


def annotation_feedback(annotation: dict[str, Any], config: LabelConfig, size: tuple[int, int], where: str) -> Feedback:
    """One (non-box) annotation as feedback for the answer it corrects (boxes: :func:`annotation_boxes`)."""
    results = list(annotation.get("result") or [])
    task = config.task
    if task == "multilabel":
        labels: dict[str, Any] = {}
        for result in results:
            if result.get("type") != "choices":
                continue
            label = config.findings.get(str(result.get("from_name")))
            if label is None:
                raise AnnotationError(f"{where}: {result.get('from_name')!r} is not a finding of this config")
            choice = _choice(result, where)
            if choice not in (PRESENT, ABSENT):
                raise AnnotationError(f"{where}: {label!r} answered {choice!r}, not {PRESENT!r} or {ABSENT!r}")
            labels[label] = 1 if choice == PRESENT else 0
        return Feedback(labels=labels or None)
    if task == "multiclass":
        chosen = [_choice(r, where) for r in results if r.get("from_name") == CLASS_CONTROL]
        if not chosen:
            return Feedback()
        if chosen[0] not in config.labels:
            raise AnnotationError(f"{where}: class {chosen[0]!r} is not one of {list(config.labels)}")
        return Feedback(labels={label: int(label == chosen[0]) for label in config.labels})
    if task == "regression":
        numbers = [(r.get("value") or {}).get("number") for r in results if r.get("from_name") == VALUE_CONTROL]
        numbers = [n for n in numbers if n is not None]
        if not numbers:
            return Feedback()
        try:
            return Feedback(value=float(str(numbers[0])))
        except (TypeError, ValueError):
            raise AnnotationError(f"{where}: the value {numbers[0]!r} is not a number") from None
    if task == "segmentation":
        return Feedback(labels={"masks": annotation_masks(results, list(config.labels), size, where)})
    raise AnnotationError(f"{where}: {task} annotations are read with annotation_boxes")
