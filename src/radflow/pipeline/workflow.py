"""The ``workflow`` stage of a workflow workspace: the models its step pipelines registered, judged as one.

A workflow workspace (``radflow init --workflow NAME``) holds one ordinary radflow pipeline per model step,
each in its own folder with its own params.yaml and dvc.yaml (synth/ingest or crops, split, train,
evaluate, export, register: one registered model each, gated by its own ``gates``), and at its root the
``workflow`` stage (params ``workflow_stage``, :class:`radflow.config.WorkflowStageConfig`). DVC runs the
step pipelines first (the stage depends on each step's ``models/registration.json``), all logging into
the workspace's one MLflow store (``radflow run`` points every stage at it).

The stage then:

1. composes the *candidate*: the workspace's workflow with each step model pinned to the version its step
   just registered (``models:/NAME/N`` for ``models:/NAME@ALIAS``);
2. runs it over the test split of ``workflow_stage.dataset`` against the truth its ``evaluation`` names
   (:func:`radflow.workflow.evaluate.evaluate_workflow`): ``boxes``, per-box truth for detect -> crop ->
   classify (spine), or ``values``, per-image truth for a workflow whose answer is a value (bone age: MAE);
   one parent MLflow run with the end-to-end metrics and a child run per step, the workflow's own ``gates``
   judged;
3. where every step model has a champion and they are not the candidate, runs the champion composition on
   the same images (not logged) and checks ``max_drop``: an end-to-end metric may not get worse by more than
   that when one step is replaced (fall, or rise for an error such as ``mae``:
   :data:`radflow.workflow.values.LOWER_IS_BETTER`);
4. when every step passed its own gates and the workflow passed both checks, promotes each step's new
   version to champion (``promote``), so what serves ``models:/NAME@champion`` is always a composition
   that was judged end to end.

It writes ``metrics/workflow.json`` (the verdict, the versions, the metrics and both compositions' figures).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radflow.config import Params, WorkflowConfig
from radflow.errors import ConfigError, NotFoundError, did_you_mean
from radflow.pipeline.dvc_yaml import REGISTRATION, WORKFLOW_METRICS

__all__ = ["WORKSPACE_WORKFLOWS", "pin_versions", "run_workflow_stage", "workflow_workspace_params"]


def pin_versions(config: WorkflowConfig, versions: dict[str, str]) -> WorkflowConfig:
    """``config`` with each registry model step of a name in ``versions`` pinned to that version."""
    from radflow.modelref import RefKind, model_uri, parse_model_ref

    steps = []
    for step in config.steps:
        if step.model is not None:
            ref = parse_model_ref(step.model)
            if ref.kind in (RefKind.ALIAS, RefKind.VERSION) and ref.name in versions:
                step = step.model_copy(update={"model": model_uri(str(ref.name), version=versions[str(ref.name)])})
        steps.append(step)
    return config.model_copy(update={"steps": steps})


def _step_models(config: WorkflowConfig) -> list[str]:
    from radflow.modelref import RefKind, parse_model_ref

    names = []
    for step in config.steps:
        if step.model is not None:
            ref = parse_model_ref(step.model)
            if ref.kind in (RefKind.ALIAS, RefKind.VERSION) and ref.name is not None:
                names.append(ref.name)
    return names


def _registrations(root: Path, steps: list[str]) -> dict[str, dict[str, Any]]:
    """Each step's registration.json by registered model name."""
    found: dict[str, dict[str, Any]] = {}
    for step in steps:
        path = root / step / REGISTRATION
        if not path.is_file():
            raise NotFoundError(f"{path} is missing: the register stage of step {step!r} writes it (`radflow run`).")
        registration = json.loads(path.read_text())
        found[str(registration["name"])] = {**registration, "step": step}
    return found


def _champions(names: list[str], uri: str) -> dict[str, str | None]:
    from radflow.modelref import CHAMPION
    from radflow.tracking import client

    mlflow = client(uri)
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = str(mlflow.get_model_version_by_alias(name, CHAMPION).version)
        except Exception:  # no champion yet (MLflow raises its own RestException)
            out[name] = None
    return out


def _drops(new: dict[str, Any], old: dict[str, Any], limits: dict[str, float]) -> list[dict[str, Any]]:
    from radflow.workflow.values import LOWER_IS_BETTER

    checks = []
    for metric, limit in limits.items():
        a, b = new.get(metric), old.get(metric)
        if a is None or b is None:
            said = f"{metric}: not measured on both compositions; not compared"
            checks.append({"metric": metric, "passed": True, "message": said})
            continue
        # how much worse the candidate is: a fall, or a rise of an error such as mae
        drop = float(a) - float(b) if metric in LOWER_IS_BETTER else float(b) - float(a)
        passed = drop <= limit
        verb = "within" if passed else "beyond"
        checks.append(
            {
                "metric": metric,
                "passed": passed,
                "candidate": a,
                "champion": b,
                "drop": drop,
                "message": f"{metric} {a:.4f} vs the champion composition's {b:.4f}: "
                + (f"a rise of {drop:.4f} (an error: lower is better)" if metric in LOWER_IS_BETTER else "")
                + ("" if metric in LOWER_IS_BETTER else f"a drop of {drop:.4f}")
                + f", {verb} max_drop {limit}",
            }
        )
    return checks


def run_workflow_stage(root: Path, params: Params, *, threads: int | None = 1) -> dict[str, Any]:
    """The stage (see the module docstring); returns and writes ``metrics/workflow.json``'s content."""
    from radflow.registry import promote
    from radflow.tracking import resolve_tracking_uri
    from radflow.workflow import load_workflow
    from radflow.workflow.evaluate import evaluate_workflow, judges_values

    stage = params.workflow_stage
    if stage is None:
        raise ConfigError("params.yaml has no workflow_stage: this is not a workflow workspace.")
    if stage.workflow not in params.workflows:
        known = list(params.workflows)
        raise ConfigError(
            f"workflow_stage.workflow {stage.workflow!r} is not under workflows:.{did_you_mean(stage.workflow, known)}"
        )
    config = params.workflows[stage.workflow]
    uri = resolve_tracking_uri(workspace=root)
    registered = _registrations(root, stage.steps)
    models = _step_models(config)
    unknown = [m for m in models if m not in registered]
    if unknown:
        raise ConfigError(
            f"workflow {stage.workflow!r} uses {', '.join(unknown)}, which no step of workflow_stage.steps "
            f"registers (they register {', '.join(registered)})."
        )
    candidate = {name: str(registered[name]["version"]) for name in models}
    champions = _champions(models, uri)
    judged: dict[str, Any] = dict(dataset=root / stage.dataset, table=root / stage.table, label=stage.label)
    if stage.evaluation == "values":
        judged["sex_field"] = stage.sex_field
    else:
        judged.update(iou=stage.iou, level_field=stage.level_field)
    workflow = load_workflow(stage.workflow, pin_versions(config, candidate), tracking_uri=uri, threads=threads)
    if judges_values(workflow) != (stage.evaluation == "values"):
        gives = "a value" if judges_values(workflow) else f"{workflow.step(workflow.output).kind}"
        raise ConfigError(
            f"workflow_stage.evaluation is {stage.evaluation}, but workflow {stage.workflow!r} answers {gives}: "
            "values judges a workflow whose answer is a value, boxes a detect -> crop -> classify one."
        )
    result = evaluate_workflow(workflow, **judged, tracking_uri=uri)
    drops: list[dict[str, Any]] = []
    baseline: dict[str, Any] | None = None
    if stage.max_drop and all(champions.values()) and champions != candidate:
        pinned = {name: str(version) for name, version in champions.items() if version is not None}
        old = load_workflow(stage.workflow, pin_versions(config, pinned), tracking_uri=uri, threads=threads)
        baseline = evaluate_workflow(old, **judged)["metrics"]
        drops = _drops(result["metrics"], baseline, stage.max_drop)
    steps_passed = all(bool(registered[name]["passed"]) for name in models)
    passed = steps_passed and bool(result["gates"]["passed"]) and all(c["passed"] for c in drops)
    promoted: dict[str, str] = {}
    if passed and stage.promote:
        for name, version in candidate.items():
            if champions[name] != version:
                promote(name, version, uri)
                promoted[name] = version
    parent = (result.get("mlflow") or {}).get("parent_run_id")
    if parent:
        from radflow.tracking import client

        client(uri).set_tag(parent, "radflow.workflow.verdict", "passed" if passed else "failed")
    summary = {
        "workflow": stage.workflow,
        "passed": passed,
        "steps_passed": steps_passed,
        "versions": candidate,
        "champions_before": champions,
        "promoted": promoted,
        "metrics": result["metrics"],
        "counts": result["counts"],
        "gates": result["gates"],
        "max_drop": drops,
        "champion_metrics": baseline,
        "steps": {name: {k: registered[name][k] for k in ("step", "version", "passed", "failures")} for name in models},
        "parent_run_id": parent,
    }
    out = root / WORKFLOW_METRICS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


_SPINE_STEPS: dict[str, dict[str, Any]] = {
    # Vertebra detection on the sagittal MR phantoms (COCO boxes of every vertebral body, patients from PatientID).
    "vertebra": {
        "data.source": "synthetic",
        "data.synth.kind": "spine",
        "data.synth.n": 240,
        "data.size": 256,
        "train.arch": "fcos_small",
        "registry.name": "spine-vertebrae",
    },
    # Schmorl's node classification on the crops of the vertebra step's boxes (same patients, same split).
    "schmorl": {
        "data.source": "crops",
        "data.size": 64,
        "data.crops.dataset": "../vertebra/data/split",
        "data.crops.table": "../vertebra/data/raw/spine-phantom/annotations.json",
        "data.crops.label": "schmorl",
        "data.crops.keep": ["level"],
        "data.crops.margin": 0.1,
        "train.arch": "small_cnn",
        "registry.name": "spine-schmorl",
    },
}
_SPINE_WORKFLOW: dict[str, Any] = {
    "description": "Vertebrae on sagittal MR, then a Schmorl's node check inside each, named by level.",
    "steps": [
        {"name": "detect", "model": "models:/spine-vertebrae@champion"},
        {"name": "vertebrae", "crop": "box", "margin": 0.1, "levels": "spine"},
        {"name": "resize", "resize": 64},
        {"name": "schmorl", "model": "models:/spine-schmorl@champion", "batch_size": 64},
        {"name": "patient", "aggregate": "max"},
    ],
    "gates": {"detection_recall": 0.0},
}
_SPINE_STAGE: dict[str, Any] = {
    "workflow": "spine",
    "steps": ["steps/vertebra", "steps/schmorl"],
    "dataset": "steps/vertebra/data/split",
    "boxes": "steps/vertebra/data/raw/spine-phantom/vertebrae.csv",
    "label": "schmorl",
    "level_field": "level",
    "max_drop": {"detection_recall": 0.05},
}


_HAND_RAW = "data/raw/boneage-phantom"
_BONE_AGE_STEPS: dict[str, dict[str, Any]] = {
    # Hand segmentation on the RSNA-layout hand phantoms (their exact silhouette masks, ingested as masks).
    "hand": {
        "data.source": "synthetic",
        "data.synth.kind": "hand",
        "data.synth.masks": True,
        "data.synth.n": 400,
        "data.synth.size": 128,
        "data.size": 64,
        "train.arch": "small_unet",
        "registry.name": "boneage-hand",
    },
    # Bone age regressed on each hand cut at its mask's extent (the hand step's split), with the child's sex.
    "age": {
        "data.source": "crops",
        "data.size": 64,
        "data.crops.dataset": "../hand/data/split",
        "data.crops.table": f"../hand/{_HAND_RAW}/boneage-training-dataset.csv",
        "data.crops.masks": f"../hand/{_HAND_RAW}",
        "data.crops.label": "boneage",
        "data.crops.keep": [],
        "data.crops.task": "regression",
        "data.crops.sex_field": "male",
        "data.crops.margin": 0.05,
        "train.arch": "small_cnn",
        "registry.name": "boneage-age",
    },
}
_BONE_AGE_WORKFLOW: dict[str, Any] = {
    "description": "Bone age in steps (Iglovikov et al.): segment the hand, cut it at its mask, regress the age.",
    "steps": [
        {"name": "hand", "model": "models:/boneage-hand@champion"},
        {"name": "crop", "crop": "mask", "margin": 0.05, "labels": ["Hand"]},
        {"name": "resize", "resize": 64},
        {"name": "age", "model": "models:/boneage-age@champion"},
        {"name": "months", "aggregate": "mean"},
    ],
    "gates": {"min_answered": 0.9},
}
_BONE_AGE_STAGE: dict[str, Any] = {
    "workflow": "bone-age",
    "evaluation": "values",
    "steps": ["steps/hand", "steps/age"],
    "dataset": "steps/hand/data/split",
    "values": f"steps/hand/{_HAND_RAW}/boneage-training-dataset.csv",
    "label": "boneage",
    "sex_field": "male",
    "max_drop": {"mae": 3.0},
}


@dataclass(frozen=True)
class _BuiltIn:
    """A built-in workflow workspace: each step folder's params, the workflow, the stage, and its crop step."""

    steps: dict[str, dict[str, Any]]
    workflow: dict[str, Any]
    stage: dict[str, Any]
    crop_step: str
    """The step whose dataset is cut from another's: the served crop step takes its margin, the resize its size."""


_BUILT_INS: dict[str, _BuiltIn] = {
    "spine": _BuiltIn(_SPINE_STEPS, _SPINE_WORKFLOW, _SPINE_STAGE, "schmorl"),
    "bone-age": _BuiltIn(_BONE_AGE_STEPS, _BONE_AGE_WORKFLOW, _BONE_AGE_STAGE, "age"),
}
WORKSPACE_WORKFLOWS = tuple(_BUILT_INS)
"""The built-in workflows ``radflow init --workflow NAME`` makes a workspace for (phantoms with exact truth)."""


def workflow_workspace_params(name: str, overrides: dict[str, Any] | None = None) -> tuple[Params, dict[str, Params]]:
    """(the root's params, each step folder's params) of built-in workflow ``name``.

    ``overrides`` are dotted params: ``STEP.KEY`` (``vertebra.train.epochs``) sets one step's, a key under
    ``workflow_stage`` or ``workflows`` the root's, any other key every step's (``train.epochs``).
    """
    if name not in WORKSPACE_WORKFLOWS:
        raise ConfigError(
            f"unknown workflow {name!r}.{did_you_mean(name, WORKSPACE_WORKFLOWS)} "
            f"Built in: {', '.join(WORKSPACE_WORKFLOWS)}."
        )
    built = _BUILT_INS[name]
    steps = {step: Params().with_overrides(values) for step, values in built.steps.items()}
    root_sets: dict[str, Any] = {}
    step_sets: dict[str, dict[str, Any]] = {step: {} for step in steps}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head in steps and rest:
            step_sets[head][rest] = value
        elif head in ("workflow_stage", "workflows"):
            root_sets[key] = value
        else:
            for sets in step_sets.values():
                sets[key] = value
    try:
        steps = {step: params.with_overrides(step_sets[step]) for step, params in steps.items()}
    except ConfigError as exc:
        raise ConfigError(f"{exc} (a key for one step only: STEP.KEY, steps: {', '.join(steps)})") from None
    # The served crops are cut and resized as the crop step's dataset was: its model sees the same pixels.
    declared = copy.deepcopy(built.workflow)
    cut = steps[built.crop_step].data
    for step in declared["steps"]:
        if "resize" in step:
            step["resize"] = cut.size
        if "crop" in step:
            step["margin"] = cut.crops.margin
    # /v1/predict of `radflow serve --workspace` answers the first step's model (the vertebra boxes, the hand
    # mask); the workflow answers at /v1/workflows/NAME/predict.
    model = next(str(s["model"]) for s in declared["steps"] if "model" in s)
    first = {"serve": {"model": model}, "registry": {"name": model.removeprefix("models:/").split("@")[0]}}
    root = Params.model_validate({**first, "workflows": {name: declared}, "workflow_stage": built.stage})
    return root.with_overrides(root_sets), {f"steps/{step}": params for step, params in steps.items()}
