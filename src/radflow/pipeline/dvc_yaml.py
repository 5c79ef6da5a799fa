"""The workspace's ``dvc.yaml``: one stage per radflow step, with the exact deps, outs, params and metrics.

Every stage runs ``radflow stage NAME``, which reads ``params.yaml`` and calls the same library
function as the matching user command (``radflow synth``, ``ingest``, ``split``, ``train``,
``evaluate``, ``export``, ``register``). DVC decides what to rerun from what is declared here, so
each stage lists only the params sections it reads: changing ``train.lr`` reruns train and what
follows it, never ingest or split.
"""

from __future__ import annotations

from typing import Any

from radflow.config import Params

__all__ = [
    "CHECKPOINTS",
    "DATASET",
    "EVAL_DIR",
    "EXPORT_DIR",
    "HAND_SYNTH_DIR",
    "METRICS",
    "MODEL",
    "ONNX",
    "REGISTRATION",
    "ROC",
    "SPINE_SYNTH_DIR",
    "SPLIT_DATASET",
    "STAGES",
    "SYNTH_DIR",
    "TRAIN_METRICS",
    "WORKFLOW_METRICS",
    "dvc_yaml",
    "raw_path",
]

SYNTH_DIR = "data/raw/CheXpert-v1.0-phantom"
"""Where the synth stage writes phantom data (the folder name prefixes CheXpert's CSV paths)."""
SPINE_SYNTH_DIR = "data/raw/spine-phantom"
"""Where the synth stage writes spine phantoms (``data.synth.kind: spine``)."""
HAND_SYNTH_DIR = "data/raw/boneage-phantom"
"""Where the synth stage writes hand phantoms (``data.synth.kind: hand``, RSNA bone age's layout)."""
WORKFLOW_METRICS = "metrics/workflow.json"
"""What a workflow workspace's workflow stage writes (:mod:`radflow.pipeline.workflow`)."""
DATASET = "data/dataset"
SPLIT_DATASET = "data/split"
CHECKPOINTS = "models/checkpoints"
TRAIN_METRICS = "metrics/train.json"
MODEL = "models/model.pt"
EVAL_DIR = "reports/evaluation"
METRICS = "metrics/evaluation.json"
ROC = "plots/roc.json"
EXPORT_DIR = "models/export"
ONNX = f"{EXPORT_DIR}/model.onnx"
REGISTRATION = "models/registration.json"
STAGES = ("synth", "ingest", "split", "train", "evaluate", "export", "register")
"""The stages of an ordinary workspace; a crop step has ``crops`` for synth and ingest, a workflow root ``workflow``."""

_INGEST_PARAMS = [
    "data.source",
    "data.raw",
    "data.size",
    "data.uncertain",
    "data.labels",
    "data.frontal_only",
    "data.labels_csv",
    "data.extra",
]


def raw_path(params: Params) -> str:
    """The raw data folder ingest reads: the synth stage's output for phantom data, else ``data.raw``."""
    if params.data.source == "synthetic":
        return {"spine": SPINE_SYNTH_DIR, "hand": HAND_SYNTH_DIR}.get(params.data.synth.kind, SYNTH_DIR)
    return params.data.raw


def _stage(name: str, deps: list[str], params: list[str], outs: list[Any], **extra: Any) -> dict[str, Any]:
    stage: dict[str, Any] = {"cmd": f"radflow stage {name}"}
    if deps:
        stage["deps"] = deps
    stage["params"] = params
    if outs:
        stage["outs"] = outs
    stage.update(extra)
    return stage


def dvc_yaml(params: Params) -> dict[str, Any]:
    """The ``dvc.yaml`` content for a workspace with these params (the synth stage only for phantom data).

    A workflow workspace's root (``workflow_stage`` set) holds the workflow stage only: its steps are
    pipelines of their own, each in its folder with its own dvc.yaml.
    """
    stages: dict[str, Any] = {}
    if params.workflow_stage is not None:
        ws = params.workflow_stage
        stages["workflow"] = _stage(
            "workflow",
            [*(f"{step}/{REGISTRATION}" for step in ws.steps), ws.dataset, ws.table],
            ["workflow_stage", f"workflows.{ws.workflow}"],
            [],
            metrics=[{WORKFLOW_METRICS: {"cache": False}}],
        )
        return {"stages": stages}
    if params.data.source == "crops":
        crops = params.data.crops
        # The crops of another step's detection dataset, each keeping its image's patient and split.
        deps = [crops.dataset, crops.table, *([crops.masks] if crops.masks and crops.masks != crops.table else [])]
        stages["crops"] = _stage("crops", deps, ["data.crops", "data.size"], [DATASET])
    else:
        raw = raw_path(params)
        if params.data.source == "synthetic":
            stages["synth"] = _stage("synth", [], ["data.synth"], [raw])
        # Extra training data (e.g. exported feedback) is a dep like the raw data: a changed folder reruns ingest.
        stages["ingest"] = _stage("ingest", [raw, *params.data.extra], _INGEST_PARAMS, [DATASET])
    stages["split"] = _stage("split", [DATASET], ["split"], [SPLIT_DATASET])
    stages["train"] = _stage(
        "train",
        [SPLIT_DATASET],
        ["train"],
        # Checkpoints persist between runs: last.pt is what an interrupted training resumes from.
        [{CHECKPOINTS: {"persist": True, "cache": False}}],
        metrics=[{TRAIN_METRICS: {"cache": False}}],
    )
    stages["evaluate"] = _stage(
        "evaluate",
        [SPLIT_DATASET, f"{CHECKPOINTS}/best.pt", TRAIN_METRICS],
        ["evaluate"],
        [MODEL, EVAL_DIR],
        metrics=[{METRICS: {"cache": False}}],
        plots=[{ROC: {"cache": False, "x": "fpr", "y": "tpr", "template": "simple", "title": "ROC (test split)"}}],
    )
    stages["export"] = _stage("export", [MODEL, SPLIT_DATASET, TRAIN_METRICS], ["export"], [EXPORT_DIR])
    stages["register"] = _stage(
        "register",
        [MODEL, EXPORT_DIR, TRAIN_METRICS, METRICS],
        ["gates", "registry"],
        [{REGISTRATION: {"cache": False}}],
    )
    return {"stages": stages}
