"""A workflow judged end to end on a dataset's held-out split: :func:`evaluate_workflow`.

A workflow whose answer is a **value** (segment -> crop by mask -> regress: bone age) is judged against a
per-image table (:func:`radflow.workflow.crops.read_value_table`: ``path`` or RSNA's ``id``, the true value
``label``, ``sex_field`` giving each image's sex to the regression as a DICOM's PatientSex would): MAE, RMSE,
bias, ``within_12``, ``answered`` (:mod:`radflow.workflow.values`). Gates are ``max_mae``-style
(``max_METRIC`` / ``min_METRIC``). The rest of this docstring is the detect -> crop -> classify workflow's:

The loaded workflow (:func:`radflow.workflow.run_workflow`, the served code path) answers every image of the
split that a box table with per-box truth names (the table and dataset of :mod:`radflow.workflow.crops`:
images found in the dataset by file sha256). Its answers are compared with the truth

* **detection**: the boxes the workflow's crop-by-box step cut (the detector's boxes it kept) against the
  true boxes, greedy by score at IoU >= ``iou`` (0.5): recall, precision;
* **per box** (vertebra), on the matched pairs: the per-crop classifier's probability of ``finding``
  against the box's 0/1 attribute ``label``: AUROC, and sensitivity / specificity at the model's own
  threshold; ``end_to_end_sensitivity`` also counts a positive box that was never detected as missed;
  with ``level_field``, ``level_accuracy``: matched boxes whose ``level`` (named by the crop step's
  ``levels``) is the true one;
* **per patient** (images grouped by the dataset's patient): positive when any true box is, predicted by
  :func:`radflow.workflow.glue.patient_summary` over the patient's answers: AUROC, sensitivity,
  specificity, accuracy.

Gates are minimums of these metrics (``workflows.NAME.gates`` in params.yaml, or given; ``min_METRIC`` and
``max_METRIC`` name the bound's side); the verdict is in the result. With ``tracking_uri`` the evaluation
(of either kind) is ONE parent MLflow run (``workflow-NAME``: the metrics, the gates' verdict,
``evaluation.json``) with a child run per step (its model's name, version, alias and run id; its latency
per image).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radflow.data.dataset import Dataset
from radflow.data.decode import decode_image
from radflow.errors import ConfigError, did_you_mean
from radflow.metrics.detection import box_iou
from radflow.workflow.crops import (
    LabelledBox,
    TableImage,
    binary_value,
    read_box_table,
    read_value_table,
    sex_value,
    table_images,
    target_value,
)
from radflow.workflow.execute import run_workflow
from radflow.workflow.glue import aggregate_findings, patient_summary
from radflow.workflow.graph import Kind, Step, Workflow, WorkflowError
from radflow.workflow.values import VALUE_METRICS, score_values

__all__ = [
    "METRICS",
    "VALUE_METRICS",
    "WORKFLOW_TAG",
    "Roles",
    "check_gates",
    "evaluate_workflow",
    "judges_values",
    "score_answers",
]

WORKFLOW_TAG = "radflow.workflow"
"""Tag naming the workflow on the parent run and every child run."""
METRICS = (
    "detection_recall",
    "detection_precision",
    "level_accuracy",
    "box_auroc",
    "box_sensitivity",
    "box_specificity",
    "end_to_end_sensitivity",
    "patient_auroc",
    "patient_sensitivity",
    "patient_specificity",
    "patient_accuracy",
)
"""The end-to-end metrics a gate may name (a box is a vertebra in the spine workflow)."""


@dataclass(frozen=True)
class Roles:
    """The steps evaluation reads, by name: the crop by box, the per-crop classifier after it, the answer
    (``output_findings``: whether the answer is the image's aggregated findings)."""

    crop: str
    classify: str
    output: str
    output_findings: bool


def _roles(workflow: Workflow) -> tuple[Roles, Step]:
    crop = next((s for s in workflow.steps if s.config.crop == "box"), None)
    if crop is None:
        raise WorkflowError(f"workflow {workflow.name!r}: end-to-end evaluation needs a crop by box step")
    after = workflow.steps[workflow.steps.index(crop) + 1 :]
    classify = next((s for s in after if s.model is not None and s.kind == Kind("findings", per_crop=True)), None)
    if classify is None:
        raise WorkflowError(
            f"workflow {workflow.name!r}: end-to-end evaluation needs a classifier on the crops of step {crop.name!r}"
        )
    output = workflow.step(workflow.output)
    return Roles(crop.name, classify.name, output.name, output.kind == Kind("findings")), classify


def _finding(step: Step, finding: str | None, label: str) -> str:
    assert step.model is not None
    labels = list(step.model.labels)
    if finding is None:
        finding = labels[0] if len(labels) == 1 else label
    if finding not in labels:
        raise ConfigError(
            f"step {step.name!r} answers {', '.join(labels)}, not {finding!r}; name the finding to judge "
            f"(--finding).{did_you_mean(finding, labels)}"
        )
    return finding


def _match(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou: float) -> list[tuple[int, int]]:
    """(pred, truth) pairs, greedy by score: each prediction takes the best free truth overlapping ``iou`` or more."""
    if not len(pred) or not len(truth):
        return []
    ious = box_iou(pred, truth)
    taken = np.zeros(len(truth), dtype=bool)
    pairs = []
    for d in np.argsort(-scores, kind="stable"):
        row = np.where(taken | (ious[d] < iou), -1.0, ious[d])
        if row.max() < 0:
            continue
        g = int(np.argmax(row))
        taken[g] = True
        pairs.append((int(d), g))
    return pairs


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _binary(y: list[float], p: list[float], positive: list[bool], prefix: str) -> dict[str, float | None]:
    """AUROC (None with one class), sensitivity and specificity at the model's decisions."""
    from sklearn.metrics import roc_auc_score

    truth, decided = np.asarray(y, bool), np.asarray(positive, bool)
    auroc = float(roc_auc_score(truth, p)) if 0 < truth.sum() < len(truth) else None
    return {
        f"{prefix}_auroc": auroc,
        f"{prefix}_sensitivity": _ratio(float((truth & decided).sum()), float(truth.sum())),
        f"{prefix}_specificity": _ratio(float((~truth & ~decided).sum()), float((~truth).sum())),
    }


def _gate_side(name: str, known: Sequence[str]) -> tuple[str, str]:
    """(metric, ``minimum`` | ``maximum``) of gate ``name``: ``max_M`` / ``min_M``, or a plain metric (a minimum)."""
    for prefix, side in (("max_", "maximum"), ("min_", "minimum")):
        if name.startswith(prefix) and name[len(prefix) :] in known:
            return name[len(prefix) :], side
    if name in known:
        return name, "minimum"
    choices = [*known, *(f"max_{m}" for m in known), *(f"min_{m}" for m in known)]
    raise ConfigError(
        f"unknown workflow gate {name!r}; gates are minimums of {', '.join(known)} (or max_METRIC / min_METRIC)."
        f"{did_you_mean(name, choices)}"
    )


def check_gates(
    metrics: Mapping[str, float | None], gates: Mapping[str, float], known: Sequence[str] = METRICS
) -> dict[str, Any]:
    """Each gate checked: ``{"passed", "checks": [{"metric", "minimum" | "maximum", "value", "passed"}],
    "failures": [message]}``. A gate is ``metric -> minimum``, or ``max_METRIC`` / ``min_METRIC`` -> the bound, of
    the ``known`` metrics. A metric that could not be measured (None) fails its gate."""
    sides = {name: _gate_side(name, known) for name in gates}
    checks, failures = [], []
    for name, bound in gates.items():
        metric, side = sides[name]
        value = metrics.get(metric)
        passed = value is not None and (value >= bound if side == "minimum" else value <= bound)
        checks.append({"metric": metric, side: bound, "value": value, "passed": passed})
        if not passed:
            failures.append(
                f"{metric} could not be measured on this split, so it does not show the {side} {bound:g}"
                if value is None
                else f"{metric} {value:.4f} is {'below' if side == 'minimum' else 'above'} the {side} {bound:g}"
            )
    return {"passed": not failures, "checks": checks, "failures": failures}


def judges_values(workflow: Workflow) -> bool:
    """Whether ``workflow``'s answer is a value (judged against per-image truth), not boxes and findings."""
    return workflow.step(workflow.output).kind.what == "value"


@dataclass
class _Tally:
    """What the images of the split add up to."""

    truths: int = 0
    detected: int = 0
    matched: int = 0
    box_y: list[float] = field(default_factory=list)
    box_p: list[float] = field(default_factory=list)
    box_positive: list[bool] = field(default_factory=list)
    missed_positive: int = 0
    positives: int = 0
    levels_known: int = 0
    levels_right: int = 0
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    patients: dict[str, list[tuple[bool, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    images: list[dict[str, Any]] = field(default_factory=list)


def _judge_image(
    answer: dict[str, Any],
    roles: Roles,
    truth: list[Any],
    finding: str,
    label: str,
    level_field: str | None,
    iou: float,
    tally: _Tally,
) -> dict[str, Any]:
    steps = {s["name"]: s for s in answer["steps"]}
    for s in answer["steps"]:
        tally.latency[s["name"]].append(float(s["latency_ms"]))
    tally.latency["total"].append(float(answer["latency_ms"]["total"]))
    crops = steps[roles.crop]["output"]["crops"]
    classified = steps[roles.classify]["output"]["crops"]
    pred = np.array([c["source"]["box"] for c in crops], np.float64).reshape(-1, 4)
    scores = np.array([float(c["source"].get("score", 1.0)) for c in crops], np.float64)
    true_boxes = np.array([t.box for t in truth], np.float64).reshape(-1, 4)
    y = [binary_value(t.values[label], t.where, label) for t in truth]
    pairs = _match(pred, scores, true_boxes, iou)
    tally.truths += len(truth)
    tally.detected += len(crops)
    tally.matched += len(pairs)
    found = {g for _, g in pairs}
    tally.missed_positive += sum(1 for g, v in enumerate(y) if v == 1 and g not in found)
    per_box = []
    for d, g in pairs:
        findings = {f["label"]: f for f in classified[d].get("findings") or []}
        f = findings[finding]
        tally.box_y.append(y[g])
        tally.box_p.append(float(f["probability"]))
        tally.box_positive.append(bool(f["positive"]))
        entry = {"truth": y[g], "probability": float(f["probability"]), "positive": bool(f["positive"])}
        if level_field is not None:
            true_level = truth[g].values.get(level_field)
            entry.update(level=crops[d].get("level"), true_level=true_level)
            if true_level not in (None, ""):
                tally.levels_known += 1
                tally.levels_right += int(str(crops[d].get("level")) == str(true_level))
        per_box.append(entry)
    # the image's own answer for the patient summary: the output's findings when it aggregates them
    output = steps[roles.output]["output"]
    if roles.output_findings and "findings" in output:
        image_findings = output["findings"]
    else:
        image_findings = aggregate_findings([c.get("findings") or [] for c in classified], "max")
    summary = {"findings": [f for f in image_findings if f["label"] == finding], "crops": classified}
    return {
        "truth_boxes": len(truth),
        "detected": len(crops),
        "matched": len(pairs),
        "boxes": per_box,
        "answer": summary,
    }


def _step_runs(workflow: Workflow, latency: Mapping[str, list[float]]) -> list[dict[str, Any]]:
    out = []
    for s in workflow.steps:
        times = np.asarray(latency.get(s.name, []), np.float64)
        entry: dict[str, Any] = {
            "name": s.name,
            "action": s.action,
            "kind": str(s.kind),
            "latency_ms": {
                "mean": float(times.mean()) if len(times) else None,
                "p50": float(np.percentile(times, 50)) if len(times) else None,
                "p95": float(np.percentile(times, 95)) if len(times) else None,
            },
        }
        if s.resolved is not None:
            r = s.resolved
            entry["model"] = {"name": r.name, "version": r.version, "alias": r.alias, "uri": r.uri, "run_id": r.run_id}
        elif s.model is not None:
            entry["model"] = {"name": None, "version": None, "alias": None, "uri": str(s.config.model), "run_id": None}
        out.append(entry)
    return out


def _log(result: dict[str, Any], tracking_uri: str, experiment: str) -> dict[str, Any]:
    """One parent run with the end-to-end metrics and verdict, a child run per step; returns their ids."""
    from radflow.tracking import client as make_client
    from radflow.tracking import ensure_experiment

    experiment_id = ensure_experiment(tracking_uri, experiment)
    client = make_client(tracking_uri, create=True)
    name = result["workflow"]
    gate = "passed" if result["gates"]["passed"] else "failed"
    parent = client.create_run(
        experiment_id,
        run_name=f"workflow-{name}",
        tags={WORKFLOW_TAG: name, "radflow.workflow.role": "evaluation", "radflow.workflow.gate": gate},
    ).info.run_id
    try:
        for key, value in result["params"].items():
            client.log_param(parent, key, str(value))
        for key, value in result["metrics"].items():
            if value is not None:
                client.log_metric(parent, key, float(value))
        for key, value in result["counts"].items():
            client.log_metric(parent, f"n_{key}", float(value))
        children = {}
        for step in result["steps"]:
            tags = {"mlflow.parentRunId": parent, WORKFLOW_TAG: name, "radflow.workflow.step": step["name"]}
            model = step.get("model") or {}
            for key in ("name", "version", "alias", "uri", "run_id"):
                if model.get(key) is not None:
                    tags[f"radflow.workflow.model_{key}"] = str(model[key])
            child = client.create_run(experiment_id, run_name=f"{name}/{step['name']}", tags=tags).info.run_id
            client.log_param(child, "action", step["action"])
            client.log_param(child, "kind", step["kind"])
            for stat, value in step["latency_ms"].items():
                if value is not None:
                    client.log_metric(child, f"latency_ms_{stat}", float(value))
            client.set_terminated(child)
            children[step["name"]] = child
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "evaluation.json"
            path.write_text(json.dumps({k: v for k, v in result.items() if k != "images"}, indent=2, default=str))
            client.log_artifact(parent, str(path))
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent)
    return {"tracking_uri": tracking_uri, "experiment": experiment, "parent_run_id": parent, "step_runs": children}


def score_answers(
    answers: Sequence[tuple[str, str, dict[str, Any], Sequence[LabelledBox]]],
    roles: Roles,
    finding: str,
    label: str,
    *,
    level_field: str | None = None,
    iou: float = 0.5,
) -> tuple[dict[str, float | None], list[dict[str, Any]], _Tally]:
    """The end-to-end metrics, per-patient results and tallies of workflow answers against their true boxes.

    ``answers``: per image (patient, image id, :func:`run_workflow`'s answer, its true boxes from the table).
    Pure: no model runs here, so hand-made answers test the arithmetic.
    """
    tally = _Tally()
    for patient, image_id, answer, truth in answers:
        judged = _judge_image(answer, roles, list(truth), finding, label, level_field, iou, tally)
        truth_positive = any(binary_value(t.values[label], t.where, label) == 1 for t in truth)
        tally.patients[patient].append((truth_positive, judged.pop("answer")))
        tally.images.append({"image_id": image_id, **judged})
    metrics: dict[str, float | None] = {
        "detection_recall": _ratio(tally.matched, tally.truths),
        "detection_precision": _ratio(tally.matched, tally.detected),
        "level_accuracy": _ratio(tally.levels_right, tally.levels_known) if level_field else None,
        **_binary(tally.box_y, tally.box_p, tally.box_positive, "box"),
    }
    tally.positives = sum(1 for v in tally.box_y if v == 1) + tally.missed_positive
    caught = sum(1 for v, d in zip(tally.box_y, tally.box_positive, strict=True) if v == 1 and d)
    metrics["end_to_end_sensitivity"] = _ratio(caught, tally.positives)
    per_patient = []
    for patient, entries in tally.patients.items():
        summary = patient_summary([a for _, a in entries])
        f = next((x for x in summary["findings"] if x["label"] == finding), None)
        per_patient.append({
            "patient": patient,
            "images": len(entries),
            "truth": float(any(t for t, _ in entries)),
            "probability": 0.0 if f is None or f["probability"] is None else float(f["probability"]),
            "positive": bool(f and f["positive"]),
            "levels": summary["levels"],
        })  # fmt: skip
    patient_metrics = _binary(
        [p["truth"] for p in per_patient], [p["probability"] for p in per_patient],
        [p["positive"] for p in per_patient], "patient",
    )  # fmt: skip
    metrics.update(patient_metrics)
    metrics["patient_accuracy"] = _ratio(
        sum(1 for p in per_patient if bool(p["truth"]) == p["positive"]), len(per_patient)
    )
    return metrics, per_patient, tally


def _in_split(
    found: list[tuple[TableImage, int]], ds: Dataset, split: str, dataset: Path, table: Path
) -> list[tuple[TableImage, int]]:
    """The table's images found in the dataset (with their rows) that are in ``split``; ConfigError if none."""
    rows = set(ds.indices(split).tolist())
    chosen = [(image, row) for image, row in found if row in rows and image.path is not None]
    if not chosen:
        raise ConfigError(
            f"no image of the {split} split of {dataset} is in {table.name} ({len(found)} of its images are in "
            "the dataset, none in that split); evaluate on the split the table's images went to."
        )
    return chosen


def evaluate_workflow(
    workflow: Workflow,
    dataset: Path,
    table: Path,
    label: str,
    *,
    finding: str | None = None,
    split: str = "test",
    iou: float = 0.5,
    level_field: str | None = None,
    box_label: str | None = None,
    gates: Mapping[str, float] | None = None,
    tracking_uri: str | None = None,
    experiment: str = "workflows",
    sex_field: str | None = None,
) -> dict[str, Any]:
    """Run ``workflow`` over ``split`` of ``dataset`` and judge it against ``table``'s boxes (see the module docstring).

    ``label``: the table's 0/1 per-box attribute; ``finding``: the classifier's label judged against it (default:
    its only label, else ``label``); ``gates``: minimums by metric (default: the workflow's ``gates``).
    A workflow whose answer is a value (:func:`judges_values`) is judged against ``table``'s per-image ``label``
    instead (``sex_field``: the table's sex field; ``finding``, ``iou``, ``level_field``, ``box_label`` do not
    apply). Returns ``{"workflow", "params", "counts", "metrics", "gates": {"passed", "checks", "failures"},
    "steps", "patients", "images", "mlflow"}``.
    """
    if judges_values(workflow):
        return _evaluate_values(
            workflow, dataset, table, label, split=split, gates=gates, tracking_uri=tracking_uri,
            experiment=experiment, sex_field=sex_field,
        )  # fmt: skip
    if not 0 < iou <= 1:
        raise ConfigError(f"iou must be in (0, 1], got {iou:g}.")
    gates = dict(workflow.config.gates if gates is None else gates)
    check_gates({}, gates)  # an unknown gate fails before any image is run
    roles, classify = _roles(workflow)
    finding = _finding(classify, finding, label)
    ds = Dataset.open(dataset)
    fields = [label, *([level_field] if level_field and level_field != label else [])]
    boxes = read_box_table(table, fields, box_label)
    found, skipped = table_images(boxes, ds)
    chosen = _in_split(found, ds, split, dataset, boxes.path)
    patients = ds.manifest["patient_id"].astype(str).to_numpy()
    answers = [
        (
            patients[row],
            str(ds.manifest["image_id"].iloc[row]),
            run_workflow(workflow, image.path.read_bytes(), name=f"image {row}"),
            image.boxes,
        )
        for image, row in chosen
        if image.path is not None
    ]
    metrics, per_patient, tally = score_answers(answers, roles, finding, label, level_field=level_field, iou=iou)
    verdict = check_gates(metrics, gates)
    result: dict[str, Any] = {
        "workflow": workflow.name,
        "params": {
            "dataset": str(ds.version),
            "split": split,
            "table": boxes.path.name,
            "label": label,
            "finding": finding,
            "iou": iou,
            "level_field": level_field or "",
        },
        "counts": {
            "images": len(chosen),
            "patients": len(per_patient),
            "truth_boxes": tally.truths,
            "detected_boxes": tally.detected,
            "matched_boxes": tally.matched,
            "positive_boxes": tally.positives,
            "skipped_images": len(skipped),
        },
        "metrics": metrics,
        "gates": verdict,
        "steps": _step_runs(workflow, tally.latency),
        "patients": per_patient,
        "images": tally.images,
        "mlflow": None,
    }
    if tracking_uri is not None:
        result["mlflow"] = _log(result, tracking_uri, experiment)
    return result


def _evaluate_values(
    workflow: Workflow,
    dataset: Path,
    table: Path,
    label: str,
    *,
    split: str,
    gates: Mapping[str, float] | None,
    tracking_uri: str | None,
    experiment: str,
    sex_field: str | None,
) -> dict[str, Any]:
    """:func:`evaluate_workflow` for a workflow whose answer is a value (see the module docstring)."""
    gates = dict(workflow.config.gates if gates is None else gates)
    check_gates({}, gates, VALUE_METRICS)  # an unknown gate fails before any image is run
    ds = Dataset.open(dataset)
    fields = [label, *([sex_field] if sex_field and sex_field != label else [])]
    values = read_value_table(table, fields)
    found, skipped = table_images(values, ds)
    chosen = _in_split(found, ds, split, dataset, values.path)
    manifest = ds.manifest
    patients = manifest["patient_id"].astype(str).to_numpy()
    latency: dict[str, list[float]] = defaultdict(list)
    limits: dict[str, Any] = dict(workflow.decode_limits)
    answers = []
    for image, row in chosen:
        assert image.path is not None
        truth = target_value(image.values[label], image.where, label, "regression")
        decoded = decode_image(image.path.read_bytes(), name=f"image {row}", **limits)
        # The regression's second input: the table's sex, else the image's own (a DICOM's), else the dataset's.
        if sex_field is not None:
            decoded.meta["sex"] = sex_value(image.values[sex_field], image.where, sex_field)
        elif not decoded.meta.get("sex") and str(manifest["sex"].iloc[row] or "") in ("M", "F"):
            decoded.meta["sex"] = str(manifest["sex"].iloc[row])
        answer = run_workflow(workflow, decoded)
        for s in answer["steps"]:
            latency[s["name"]].append(float(s["latency_ms"]))
        latency["total"].append(float(answer["latency_ms"]["total"]))
        answers.append((patients[row], str(manifest["image_id"].iloc[row]), answer, truth))
    metrics, images = score_values(answers)
    result: dict[str, Any] = {
        "workflow": workflow.name,
        "params": {
            "dataset": str(ds.version), "split": split, "table": values.path.name, "label": label,
            "sex_field": sex_field or "", "judged": "values",
        },
        "counts": {
            "images": len(chosen),
            "patients": len({p for p, *_ in answers}),
            "answered": sum(1 for i in images if i["value"] is not None),
            "skipped_images": len(skipped),
        },
        "metrics": metrics,
        "gates": check_gates(metrics, gates, VALUE_METRICS),
        "steps": _step_runs(workflow, latency),
        "patients": [],
        "images": images,
        "mlflow": None,
    }  # fmt: skip
    if tracking_uri is not None:
        result["mlflow"] = _log(result, tracking_uri, experiment)
    return result
