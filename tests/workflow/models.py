"""A workspace with a tiny registered detector and classifier, for workflow tests and bench/workflow.py.

The detector is fcos_small at 32 px with the chest phantoms' finding labels; its weights are random
(nothing is trained: milliseconds) and its class bias is set so that version 1 answers boxes on a
phantom and version 2 answers none. The classifier is the service tests' multi-label small_cnn. Both
are real ONNX exports, registered in the workspace's own MLflow as `radflow register` leaves them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "CLASSIFIER",
    "DETECTOR",
    "FINDINGS",
    "SERVED_WORKFLOWS",
    "PhantomWorkspace",
    "findings_workflow",
    "make_detector",
    "make_workspace",
]

DETECTOR = "chest-detection"
CLASSIFIER = "chest-xray"
FINDINGS = ["Pleural Effusion", "Pneumothorax", "Lung Lesion"]
"""The chest phantoms' boxed findings (``radflow synth chest --boxes``)."""


@dataclass
class PhantomWorkspace:
    root: Path
    tracking_uri: str
    phantoms: list[Path]
    """Chest phantom PNGs (``size`` px wide, 1.2x high)."""


def make_detector(path: Path, class_bias: float) -> Path:
    """An exported fcos_small (random init, seed 0) whose class logits' bias is ``class_bias``."""
    import torch

    from radflow.export import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    torch.manual_seed(0)
    model = create_model("fcos_small", len(FINDINGS), widths=(8, 8, 16, 16)).eval()
    with torch.no_grad():
        model.get_parameter("fcos.head.classification_head.cls_logits.bias").fill_(class_bias)
    meta = ModelMeta(arch="fcos_small", task="detection", labels=FINDINGS, num_outputs=3, preprocess={"size": 32})
    return export_onnx(model, meta, path)


def _register(client: MlflowClient, experiment: str, name: str, path: Path) -> None:
    from radflow.runtime import ONNX_TAG

    run_id = client.create_run(experiment).info.run_id
    client.log_artifact(run_id, str(path), "onnx")
    client.set_tag(run_id, ONNX_TAG, f"onnx/{path.name}")
    client.set_terminated(run_id)
    client.create_model_version(name, f"runs:/{run_id}/onnx", run_id=run_id)


def make_workspace(root: Path, workflows: dict[str, Any], size: int = 64, threads: int | None = 1) -> PhantomWorkspace:
    """``root`` with phantoms, the registered models (detector v1 @champion finds boxes, v2 @challenger
    finds none; classifier v1 @champion) and a params.yaml declaring ``workflows``.

    ``size``: the phantoms' width (height is 1.2x); ``threads``: ONNX Runtime threads of the served models.
    """
    from radflow.data.synth.chest import synth_chest
    from radflow.registry import promote
    from radflow.tracking import client as make_client
    from tests.serve.models import make_onnx

    root.mkdir(parents=True, exist_ok=True)
    synth_chest(root / "phantoms", n=6, seed=0, size=size, boxes=True, workers=1)
    phantoms = sorted((root / "phantoms").rglob("*.png"))
    models = root / "models"
    finds = make_detector(models / "detector-finds.onnx", -4.0)
    blind = make_detector(models / "detector-blind.onnx", -30.0)
    classifier = make_onnx(models / "classifier", seed=0)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = make_client(uri, create=True)
    experiment = client.create_experiment("workflow", artifact_location=str(root / "mlartifacts"))
    for name, paths in ((DETECTOR, (finds, blind)), (CLASSIFIER, (classifier,))):
        client.create_registered_model(name)
        for path in paths:
            _register(client, experiment, name, path)
        promote(name, "1", uri)
    client.set_registered_model_alias(DETECTOR, "challenger", "2")
    serve = {"drift": False, **({"threads": threads} if threads else {})}
    params = {"registry": {"name": CLASSIFIER}, "serve": serve, "workflows": workflows}
    (root / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(params)), sort_keys=False))
    return PhantomWorkspace(root, uri, phantoms)


def findings_workflow(detector: str = f"models:/{DETECTOR}@champion") -> dict[str, Any]:
    """detect -> crop (10 % margin) -> classify each crop -> max over crops: the built-in chest workflow."""
    return {
        "description": "Phantom findings' boxes, then the multi-label classifier on each box.",
        "steps": [
            {"name": "detect", "model": detector},
            {"name": "crop", "crop": "box", "margin": 0.1},
            {"name": "classify", "model": f"models:/{CLASSIFIER}@champion", "batch_size": 8},
            {"name": "findings", "aggregate": "max"},
        ],
    }


def _canary() -> dict[str, Any]:
    declared = findings_workflow()
    declared["steps"][0] |= {"challenger": f"models:/{DETECTOR}@challenger", "challenger_weight": 0.5}
    return declared


SERVED_WORKFLOWS: dict[str, Any] = {
    "findings": findings_workflow(),
    "findings-v2": findings_workflow(f"models:/{DETECTOR}/2"),  # a version that finds nothing
    "broken": findings_workflow(f"models:/{DETECTOR}@nope"),
    "canary": _canary(),  # the detector's challenger (v2, finds none) answers half the requests
    "spare": findings_workflow(f"models:/{DETECTOR}@spare"),  # test_workflow.py sets the alias
    CLASSIFIER: findings_workflow(),  # named like the served model: refused when served
}
"""The workflows of tests/workflow/test_workflow.py's workspace (in process, served, logged, reloaded, V2)."""
