"""The built-in spine workflow end to end on phantoms: synth -> ingest -> split -> detector (fcos_small) and crop
classifier (small_cnn, on `radflow workflow crops` of the same split) trained a few steps -> exported and
registered -> declared with levels -> evaluated on the test split as one parent MLflow run with a child per step.

A few steps learn no vertebra, so the detector's class bias is raised before export (as tests/workflow/models.py
does) to make it answer boxes: what is checked is the plumbing and the arithmetic, against the phantoms' truth.
The hand-made answers below check the metrics themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from radflow.cli import app
from radflow.config import Params, validate_params
from radflow.data.dataset import Dataset
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.split import split_dataset
from radflow.data.synth.spine import SPINE_LEVELS, synth_spine
from radflow.errors import ConfigError
from radflow.workflow import load_workflow
from radflow.workflow.crops import LabelledBox, build_crops
from radflow.workflow.evaluate import WORKFLOW_TAG, Roles, check_gates, evaluate_workflow, score_answers

FAST = {
    "train.epochs": 1,
    "train.max_steps": 1,
    "train.batch_size": 8,
    "train.num_workers": 0,
    "train.early_stopping_patience": 0,
    "train.threads": 2,
    "train.device": "cpu",
}


def _train_export_register(dataset: Path, arch: str, name: str, root: Path, uri: str, bias: float | None) -> str:
    """Train ``arch`` a few steps, export the best checkpoint to ONNX on its run, register it as ``name`` v1;
    returns the training run's id."""
    import torch

    from radflow.export import export_onnx
    from radflow.export.pipeline import log_onnx_to_mlflow
    from radflow.runtime import ONNX_TAG
    from radflow.tracking import client as make_client
    from radflow.train.checkpoint import load_model
    from radflow.train.loop import train

    params = Params().with_overrides({**FAST, "train.arch": arch})
    result = train(dataset, params, tracking_uri=uri, out_dir=root / f"ckpt-{arch}", progress=False)
    model, meta = load_model(result.checkpoint_path)
    if bias is not None:
        with torch.no_grad():
            model.get_parameter("fcos.head.classification_head.cls_logits.bias").fill_(bias)
    onnx = export_onnx(model.eval(), meta, root / f"{arch}.onnx")
    log_onnx_to_mlflow(result.run_id, {ONNX_TAG: onnx}, uri)
    client = make_client(uri)
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{result.run_id}/onnx", run_id=result.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    return result.run_id


SPINE_WORKFLOW = {
    "description": "Vertebrae, then Schmorl's nodes in each, by level.",
    "steps": [
        {"name": "detect", "model": "models:/spine-vertebrae@champion"},
        {"name": "vertebrae", "crop": "box", "margin": 0.1, "levels": "spine"},
        {"name": "resize", "resize": 32},
        {"name": "schmorl", "model": "models:/spine-schmorl@champion", "batch_size": 64},
        {"name": "nodes", "aggregate": "max"},
    ],
    "gates": {"detection_recall": 0.0},
}


def test_the_spine_workflow_trained_declared_and_judged_end_to_end(tmp_path: Path) -> None:
    src, ds, crops = tmp_path / "spine", tmp_path / "ds", tmp_path / "crops"
    synth_spine(src, 8, seed=3, size=64, workers=1)
    ingest(src, "coco-boxes", ds, IngestOptions(size=32, workers=1))
    split_dataset(ds, val=0.25, test=0.25, seed=0)
    build_crops(ds, crops, src / "annotations.json", "schmorl", keep=["level"], size=32)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    detector_run = _train_export_register(ds, "fcos_small", "spine-vertebrae", tmp_path, uri, bias=-1.0)
    _train_export_register(crops, "small_cnn", "spine-schmorl", tmp_path, uri, bias=None)
    config = validate_params({"workflows": {"spine": SPINE_WORKFLOW}}, "test").workflows["spine"]
    workflow = load_workflow("spine", config, tracking_uri=uri, threads=1)

    result = evaluate_workflow(workflow, ds, src / "vertebrae.csv", "schmorl", level_field="level", tracking_uri=uri)

    test_images = len(Dataset.open(ds).indices("test"))
    counts, metrics = result["counts"], result["metrics"]
    assert counts["images"] == test_images and counts["truth_boxes"] == test_images * len(SPINE_LEVELS)
    assert counts["detected_boxes"] > 0 and counts["matched_boxes"] <= counts["truth_boxes"]
    assert metrics["detection_recall"] == counts["matched_boxes"] / counts["truth_boxes"]
    assert metrics["detection_precision"] == counts["matched_boxes"] / counts["detected_boxes"]
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics.values())
    assert result["gates"]["passed"] and result["gates"]["checks"][0]["metric"] == "detection_recall"
    # per vertebra with its level: the detected boxes named top to bottom, the lowest L5
    image = result["images"][0]
    levels = [b["level"] for b in image["boxes"]]
    assert set(levels) <= {*SPINE_LEVELS, None}
    assert {p["patient"] for p in result["patients"]} == set(
        Dataset.open(ds).manifest.set_index("image_id").loc[[i["image_id"] for i in result["images"]], "patient_id"]
    )
    # one parent run with the end-to-end metrics, one child per step naming its model and latency
    from radflow.tracking import client as make_client

    client = make_client(uri)
    parent = client.get_run(result["mlflow"]["parent_run_id"])
    assert parent.data.tags[WORKFLOW_TAG] == "spine" and parent.data.tags["radflow.workflow.gate"] == "passed"
    assert parent.data.metrics["detection_recall"] == pytest.approx(metrics["detection_recall"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=20
    )
    by_step = {c.data.tags["radflow.workflow.step"]: c for c in children}
    assert list(by_step) and set(by_step) == {s["name"] for s in SPINE_WORKFLOW["steps"]}
    detect = by_step["detect"].data
    assert detect.tags["radflow.workflow.model_name"] == "spine-vertebrae"
    assert detect.tags["radflow.workflow.model_version"] == "1"
    assert detect.tags["radflow.workflow.model_run_id"] == detector_run
    assert detect.metrics["latency_ms_mean"] > 0
    # a gate above what was measured fails, and says so
    failed = evaluate_workflow(workflow, ds, src / "annotations.json", "schmorl", gates={"detection_recall": 1.01})
    assert not failed["gates"]["passed"] and "detection_recall" in failed["gates"]["failures"][0]

    runner = CliRunner()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "params.yaml").write_text(yaml.safe_dump({"workflows": {"spine": SPINE_WORKFLOW}}, sort_keys=False))
    env = {"MLFLOW_TRACKING_URI": uri}
    listed = runner.invoke(app, ["workflow", "list", "--workspace", str(workspace), "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert '"ready": true' in listed.stdout
    dicom = sorted(src.rglob("*.dcm"))[0]
    answered = runner.invoke(app, ["workflow", "predict", "spine", str(dicom), "-w", str(workspace), "--json"], env=env)
    assert answered.exit_code == 0, answered.output
    # the served answer per vertebra: crops top to bottom, the lowest six named T12..L5 from the bottom up
    steps = {st["name"]: st["output"] for st in json.loads(answered.stdout)["answers"][0]["answer"]["steps"]}
    cut = steps["vertebrae"]["crops"]
    centres = [(c["source"]["box"][1] + c["source"]["box"][3]) / 2 for c in cut]
    assert cut and centres == sorted(centres)
    named = [c["level"] for c in cut]
    assert named[-min(6, len(cut)) :] == list(SPINE_LEVELS)[-min(6, len(cut)) :] and set(named[:-6]) <= {None}
    assert [c["level"] for c in steps["nodes"]["crops"]] == named  # every per-crop result carries its level
    judged = runner.invoke(
        app,
        ["workflow", "evaluate", "spine", str(ds), "--boxes", str(src / "vertebrae.csv"), "--label", "schmorl",
         "--gate", "detection_recall=1.01", "-w", str(workspace), "--no-log"],
        env=env,
    )  # fmt: skip
    assert judged.exit_code == 1 and "detection_recall" in judged.output


def _box(x0: float, y0: float, node: int, level: str) -> LabelledBox:
    return LabelledBox((x0, y0, x0 + 10, y0 + 10), "t.csv, row 2", {"schmorl": node, "level": level})


def _answer(crops: list[tuple[list[float], float, str | None, float]]) -> dict[str, Any]:
    """A run_workflow answer: per crop (source box, detector score, level, node probability)."""

    def finding(p: float) -> dict[str, Any]:
        return {"label": "schmorl", "probability": p, "positive": p >= 0.5, "threshold": 0.5}

    cut = [{"level": lv, "box": b, "source": {"label": "Vertebra", "score": s, "box": b}} for b, s, lv, _ in crops]
    per_crop = [{**c, "findings": [finding(p)]} for c, (*_, p) in zip(cut, crops, strict=True)]
    top = max((p for *_, p in crops), default=None)
    steps = [
        {"name": "crop", "latency_ms": 1.0, "output": {"count": len(cut), "crops": cut}},
        {"name": "classify", "latency_ms": 2.0, "output": {"crops": per_crop}},
        {"name": "agg", "latency_ms": 0.1, "output": {"findings": [finding(top)] if top is not None else []}},
    ]
    return {"steps": steps, "latency_ms": {"total": 3.1}}


def test_the_end_to_end_metrics_by_hand() -> None:
    roles = Roles("crop", "classify", "agg", output_findings=True)
    truth_a = [_box(0, 0, 1, "L1"), _box(0, 20, 0, "L2"), _box(0, 40, 1, "L3")]
    # image a: L1 found (IoU 0.9, node called), L2 found (no node, called 0.6: a false positive),
    # L3 missed; one box on nothing
    answer_a = _answer([
        ([0, 1, 10, 10], 0.9, "L1", 0.8), ([0, 20, 10, 30], 0.8, "L2", 0.6), ([50, 50, 60, 60], 0.7, None, 0.1),
    ])  # fmt: skip
    # image b (another patient): its one body found, no node, called 0.2; level named wrong
    truth_b = [_box(5, 5, 0, "L4")]
    answer_b = _answer([([5, 5, 15, 15], 0.9, "L5", 0.2)])
    metrics, patients, tally = score_answers(
        [("p1", "a", answer_a, truth_a), ("p2", "b", answer_b, truth_b)], roles, "schmorl", "schmorl",
        level_field="level",
    )  # fmt: skip
    assert metrics["detection_recall"] == 3 / 4 and metrics["detection_precision"] == 3 / 4
    assert metrics["level_accuracy"] == 2 / 3
    # matched boxes: truth (1, 0, 0), probability (0.8, 0.6, 0.2): AUROC 1, sensitivity 1, specificity 1/2
    assert metrics["box_auroc"] == 1.0 and metrics["box_sensitivity"] == 1.0 and metrics["box_specificity"] == 0.5
    assert metrics["end_to_end_sensitivity"] == 1 / 2  # the missed L3 node counts as missed
    assert [(p["patient"], p["truth"], p["probability"], p["positive"]) for p in patients] == [
        ("p1", 1.0, 0.8, True),
        ("p2", 0.0, 0.2, False),
    ]
    assert metrics["patient_auroc"] == 1.0 and metrics["patient_accuracy"] == 1.0
    assert patients[0]["levels"]["L1"][0]["probability"] == 0.8 and tally.missed_positive == 1
    verdict = check_gates(metrics, {"end_to_end_sensitivity": 0.6, "box_auroc": 0.9})
    assert not verdict["passed"] and [c["passed"] for c in verdict["checks"]] == [False, True]
    with pytest.raises(ConfigError, match=r"unknown workflow gate 'box_aucroc'.*Did you mean 'box_auroc'"):
        check_gates(metrics, {"box_aucroc": 0.5})


def test_a_workflow_the_workspace_does_not_declare_is_named_with_those_it_does(tmp_path: Path) -> None:
    from radflow.errors import NotFoundError
    from radflow.workflow.workspace import workspace_workflow

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"workflows": {"spine": SPINE_WORKFLOW}}))
    with pytest.raises(NotFoundError, match=r"no workflow 'spin' .*it declares spine\. Did you mean 'spine'"):
        workspace_workflow(tmp_path, "spin")
    done = CliRunner().invoke(app, ["workflow", "predict", "spin", str(tmp_path / "params.yaml"), "-w", str(tmp_path)])
    assert done.exit_code == 2 and "no workflow 'spin'" in done.output
