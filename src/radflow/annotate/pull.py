"""``radflow annotate pull``: completed Label Studio annotations back as feedback on the predictions pushed.

Each task pushed by :func:`radflow.annotate.push.push` names its logged prediction (``data.radflow_prediction``).
Its annotations become that prediction's feedback, checked by the task kind as ``POST /v1/feedback`` checks it
(:meth:`radflow.inference.InferenceService.add_feedback`), so the pull feeds the one mechanism that turns
feedback into training data: ``radflow loop`` (or ``--loop`` here) exports it (findings as a CheXpert
``train.csv``, masks as a ``--format masks`` folder of PNGs, boxes as ``coco-boxes``), screens every image
against the held-out (val/test) images (:class:`radflow.feedback.HeldOutScreen`), tracks it as a DVC data version
and retrains, gated on the unchanged test split.

Everything is checked before anything is written: the project's labelling config against the model's task,
then every annotation. A task radflow does not know (no ``radflow_prediction``, or one the store does not hold),
a brush mask of another size than its image, or an answer the kind refuses is listed in ``refused`` with its
task and annotation ids; the other annotations are imported all the same, and feedback already imported stays.
Several annotations of a task are scored for agreement and resolved by :data:`radflow.annotate.agreement.RESOLUTION`.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np

from radflow.annotate.client import LabelStudio
from radflow.annotate.config import LabelConfig, check_config
from radflow.annotate.push import PREDICTION_KEY, default_title, task_config
from radflow.annotate.results import AnnotationError, annotation_boxes, annotation_feedback
from radflow.errors import NotFoundError, RadflowError

__all__ = ["READER_PREFIX", "import_annotations", "pull"]

READER_PREFIX = "label-studio:"
"""Feedback rows name their reader ``label-studio:<user id>`` (the annotators' ids, never their names)."""


def pull(
    workspace: Path,
    *,
    url: str,
    token: str,
    project: str | None = None,
    model: str | None = None,
    store_url: str | None = None,
) -> dict[str, Any]:
    """Import the completed annotations of ``project`` as feedback in the workspace's store; returns a summary."""
    with LabelStudio(url, token) as client:
        client.connect()
        return asyncio.run(_pull(client, workspace, project, model, store_url))


async def _pull(
    client: LabelStudio, workspace: Path, title: str | None, model: str | None, store_url: str | None
) -> dict[str, Any]:
    from radflow.inference.service import InferenceService
    from radflow.inference.settings import ServeSettings

    settings = ServeSettings(workspace=workspace, model=model, drift=False, auto_rule=False, store_url=store_url)
    service = InferenceService(settings)
    await service.start()
    try:
        loaded = service.require_router().champion.loaded
        config = task_config(loaded.model)
        title = title or default_title(loaded.name)
        found = client.find_project(title)
        if found is None:
            raise NotFoundError(f"Label Studio at {client.url} has no project {title!r}; push to it first.")
        check_config(str(found.get("label_config", "")), config, f"{found['id']} ({title!r})")
        tasks = [t for t in client.export(int(found["id"])) if _annotations(t)]
        imported, already, refused, agreement = await import_annotations(service, tasks, config)
    finally:
        await service.stop()
    return {
        "server": client.url,
        "project": {"id": int(found["id"]), "title": title},
        "task": config.task,
        "annotated_tasks": len(tasks),
        "imported": imported,
        "already_imported": already,
        "refused": refused,
        "several_annotations": sum(1 for t in tasks if len(_annotations(t)) > 1),
        "agreement": agreement,
        "resolution": _resolution(config.task),
    }


async def import_annotations(
    service: Any, tasks: list[dict[str, Any]], config: LabelConfig
) -> tuple[int, int, list[dict[str, Any]], dict[str, Any]]:
    """Exported tasks' annotations as feedback through ``service`` (an :class:`InferenceService`): (tasks
    imported, tasks whose feedback already says the same, refusals ``{task, annotations, reason}``, agreement
    of multiply annotated tasks).

    A task is imported once per change: when the prediction's latest feedback already holds what its
    annotations say (the ML backend's webhook imported it as it was submitted, or an earlier pull), nothing is
    written, so pulling again adds no rows.
    """
    from radflow.store import labelled_predictions

    planned, refused, agreement = await _plan(service, [t for t in tasks if _annotations(t)], config)
    store = service.require_store()
    await asyncio.to_thread(store.flush)
    latest = {r.id: (r.labels, r.value) for r in await asyncio.to_thread(labelled_predictions, store, siblings=False)}
    imported = already = 0
    for entry in planned:
        if latest.get(entry["prediction"]) == (entry.get("labels"), entry.get("value")):
            already += 1
            continue
        try:
            await service.add_feedback(
                entry["prediction"],
                labels=entry.get("labels"),
                value=entry.get("value"),
                reader=entry["reader"],
                comment=entry["comment"],
            )
            imported += 1
        except RadflowError as exc:  # the kind refused it (e.g. a box off the image): named, the rest go on
            refused.append({"task": entry["task"], "annotations": entry["annotations"], "reason": str(exc)})
    await asyncio.to_thread(store.flush)
    return imported, already, refused, agreement


def _annotations(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and a.get("result") is not None]


def _resolution(task: str) -> str:
    from radflow.annotate.agreement import RESOLUTION

    key = {"multilabel": "labels", "multiclass": "labels", "regression": "value", "segmentation": "masks"}
    return RESOLUTION[key.get(task, "boxes")]


async def _image_size(service: Any, prediction_id: str) -> tuple[int, int]:
    from PIL import Image

    _record, path = await service.stored_input(prediction_id, "image to check the annotation against")
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        return int(im.size[1]), int(im.size[0])


async def _plan(
    service: Any, tasks: list[dict[str, Any]], config: LabelConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Each annotated task's resolved feedback, the refusals, and the agreement of multiply annotated tasks."""
    from radflow.annotate import agreement as ag

    planned: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    several_labels: list[dict[str, dict[str, int]]] = []
    several_values: list[list[float]] = []
    several_masks: list[list[Any]] = []
    several_boxes: list[dict[str, list[dict[str, Any]]]] = []
    boxes: dict[int, dict[str, list[dict[str, Any]]]] = {}
    box_errors: dict[int, list[str]] = {}
    if config.task == "detection":
        boxes, box_errors = annotation_boxes(tasks, list(config.labels))
    for task in tasks:
        anns = _annotations(task)
        ids = [int(a["id"]) for a in anns]
        where = f"task {task['id']}"
        prediction = str((task.get("data") or {}).get(PREDICTION_KEY) or "")
        if not prediction:
            refused.append(
                {
                    "task": task["id"],
                    "annotations": ids,
                    "reason": f"{where} has no data.{PREDICTION_KEY}: "
                    "it was not pushed by radflow, so radflow does not know its image",
                }
            )
            continue
        try:
            size = await _image_size(service, prediction)
        except NotFoundError as exc:
            refused.append(
                {
                    "task": task["id"],
                    "annotations": ids,
                    "reason": f"{where}: radflow does not know its image (prediction {prediction}: {exc})",
                }
            )
            continue
        readers = [ag_reader(a) for a in anns]
        entry: dict[str, Any] = {
            "task": task["id"],
            "annotations": ids,
            "prediction": prediction,
            "reader": READER_PREFIX + ",".join(sorted(set(readers))),
            "comment": f"Label Studio task {task['id']}, annotation {', '.join(map(str, ids))}",
        }
        try:
            if config.task == "detection":
                if task["id"] in box_errors:
                    raise AnnotationError(f"{where}: {'; '.join(box_errors[int(task['id'])])}")
                by_reader = boxes.get(int(task["id"]), {"": []})
                entry["labels"] = {
                    "boxes": ag.resolve_boxes(by_reader) if len(by_reader) > 1 else next(iter(by_reader.values()))
                }
                if len(by_reader) > 1:
                    several_boxes.append(by_reader)
            else:
                readings = [annotation_feedback(a, config, size, f"{where} annotation {a['id']}") for a in anns]
                if config.task == "regression":
                    values = [r.value for r in readings if r.value is not None]
                    if not values:
                        raise AnnotationError(f"{where}: no annotation gives a value")
                    entry["value"] = ag.resolve_value(values)
                    if len(values) > 1:
                        several_values.append(values)
                elif config.task == "segmentation":
                    from radflow.data.rle import decode_rle, encode_rle

                    masks = [r.labels["masks"] for r in readings if r.labels]
                    if len(masks) > 1:
                        stacks = [[decode_rle(m[s]) for s in config.labels] for m in masks]
                        several_masks.append([np.stack(s) for s in stacks])
                        resolved = {
                            s: encode_rle(ag.resolve_masks([st[k] for st in stacks]))
                            for k, s in enumerate(config.labels)
                        }
                        entry["labels"] = {"masks": resolved}
                    else:
                        entry["labels"] = {"masks": masks[0]}
                else:
                    answers = [r.labels or {} for r in readings]
                    labels = ag.resolve_labels(answers) if len(answers) > 1 else answers[0]
                    if len(answers) > 1:
                        several_labels.append({ag_reader(a): r for a, r in zip(anns, answers, strict=True)})
                    if not labels:
                        raise AnnotationError(f"{where}: the annotations answer no finding (or tie on every one)")
                    entry["labels"] = labels
        except AnnotationError as exc:
            refused.append({"task": task["id"], "annotations": ids, "reason": str(exc)})
            continue
        planned.append(entry)
    agreement: dict[str, Any] = {}
    if several_labels:
        agreement["kappa"] = ag.label_agreement(several_labels, list(config.labels))
    if several_values:
        agreement["values"] = ag.value_agreement(several_values)
    if several_masks:
        agreement["dice"] = ag.mask_agreement(several_masks, list(config.labels))
    if several_boxes:
        agreement["boxes"] = ag.box_agreement(several_boxes, list(config.labels))
    return planned, refused, agreement


def ag_reader(annotation: dict[str, Any]) -> str:
    """An annotation's annotator: Label Studio's user id (``completed_by``), never a name or e-mail."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("id")
    return str(who)
