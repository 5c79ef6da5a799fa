"""Every registered task kind keeps the contract the rest of radflow relies on (generated from the registry)."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from radflow.errors import ConfigError, DataError
from radflow.export.onnx import export_onnx
from radflow.runtime.metadata import CAM_OUTPUT
from radflow.tasks import (
    InvalidFeedbackError,
    TaskKind,
    get_task,
    list_tasks,
    metric_key,
    register_task,
    validate_feedback,
)
from radflow.tasks.evaluation import EvalData, PlotKind, ReportTable
from radflow.train.checkpoint import ModelMeta
from radflow.train.losses import make_loss
from radflow.train.models import create_model, model_network

LABELS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
POOLED = [name for name in list_tasks() if get_task(name).network == "pooled"]
"""Kinds answering one row per image; dense kinds (segmentation) have tests of their own in test_segmentation."""


def _rows(kind: TaskKind, n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(targets in user units, activated predictions) that fit ``kind``'s label schema."""
    rng = np.random.default_rng(seed)
    width = kind.num_outputs(LABELS)
    if kind.normalise_targets:
        targets = rng.normal(100.0, 30.0, (n, width))
        return targets, targets + rng.normal(0.0, 5.0, (n, width))
    if kind.activation == "softmax":
        targets = np.eye(width)[rng.integers(0, width, n)]
    else:
        targets = (rng.random((n, width)) < 0.4).astype(float)
    scores = np.clip(0.6 * targets + 0.4 * rng.random((n, width)), 0, 1)
    return targets, scores / scores.sum(axis=1, keepdims=True) if kind.activation == "softmax" else scores


def test_unknown_task_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'multilabl'.*Did you mean 'multilabel'"):
        get_task("multilabl")


def test_a_name_registers_once() -> None:
    class Clash(TaskKind):
        name = "multilabel"

    with pytest.raises(ValueError, match="registered twice"):
        register_task(Clash)
    assert type(get_task("multilabel")).__name__ == "Multilabel"


@pytest.mark.parametrize("name", list_tasks())
def test_kind_declares_everything(name: str) -> None:
    kind = get_task(name)
    assert kind.name == name
    assert kind.family in ("classification", "regression", "segmentation", "detection")
    assert kind.network in ("pooled", "dense", "detection")
    assert kind.default_arch is None or model_network(kind.default_arch) == kind.network
    assert kind.losses and kind.monitor[1] in ("min", "max") and kind.monitor[0].startswith("val_")
    assert kind.gate_metrics and all(m.startswith("test_") for m in kind.gate_metrics)
    assert kind.output and kind.renderer in ("findings", "value", "mask", "boxes")
    assert kind.label_schema.nan_policy in ("unknown", "drop_row")
    features = kind.drift_features(LABELS)
    if kind.network == "detection":  # features of the kept boxes, not one per output
        from radflow.tasks.detection import detection_features

        assert sorted(features) == sorted(detection_features(np.zeros((0, 6), np.float32), LABELS))
        assert len(set(features)) == 2 * kind.num_outputs(LABELS)
    else:
        assert len(features) == kind.num_outputs(LABELS)


@pytest.mark.parametrize("name", POOLED)
def test_kind_encodes_a_response_that_validates_its_feedback(name: str) -> None:
    kind = get_task(name)
    _, scores = _rows(kind)
    answer = kind.encode(scores[0], LABELS, dict.fromkeys(LABELS, 0.5), kind.target_unit).to_dict()
    json.dumps(answer)
    assert answer[kind.response_key] is not None
    if kind.family == "classification":
        assert [f["label"] for f in answer["findings"]] == LABELS
        validate_feedback(answer, {LABELS[0]: 1}, None)
        with pytest.raises(InvalidFeedbackError, match="unknown labels"):
            validate_feedback(answer, {"Nodule": 1}, None)
        with pytest.raises(InvalidFeedbackError, match="send per-label 'labels'"):
            validate_feedback(answer, None, 120.0)
    else:
        assert answer["prediction"]["value"] == pytest.approx(scores[0, 0], abs=1e-4)
        validate_feedback(answer, None, 120.0)
        with pytest.raises(InvalidFeedbackError, match="send 'value'"):
            validate_feedback(answer, {LABELS[0]: 1}, None)


def test_multiclass_answers_its_arg_max_and_multilabel_its_thresholds() -> None:
    scores = np.array([0.2, 0.5, 0.3])
    assert get_task("multiclass").encode(scores, LABELS, dict.fromkeys(LABELS, 0.9), None).positives == [LABELS[1]]
    assert get_task("multilabel").encode(scores, LABELS, dict.fromkeys(LABELS, 0.3), None).positives == LABELS[1:]


@pytest.mark.parametrize("name", POOLED)
def test_kind_trains_and_scores_validation(name: str) -> None:
    kind = get_task(name)
    targets, preds = _rows(kind)
    width = kind.num_outputs(LABELS)
    outputs = torch.randn(len(targets), width, requires_grad=True)
    for loss_name in kind.losses:
        loss = make_loss(loss_name, name)(outputs, torch.tensor(targets, dtype=torch.float32))
        loss.backward()
        assert torch.isfinite(loss) and outputs.grad is not None
    activated = kind.activate(torch.zeros(2, width), 100.0, 30.0)
    assert activated.shape == (2, width)
    metrics = kind.val_metrics(LABELS, preds, targets)
    assert np.isfinite(metrics[kind.monitor[0]])
    assert kind.check_labels(LABELS[:width], targets) == []


def _eval_data(kind: TaskKind) -> EvalData:
    targets, scores = _rows(kind, n=60)
    rng = np.random.default_rng(1)
    manifest = pd.DataFrame({"sex": rng.choice(["F", "M"], len(targets)), "age": rng.uniform(1, 200, len(targets))})
    return EvalData(
        labels=LABELS[: kind.num_outputs(LABELS)] if kind.family == "classification" else ["age"],
        split="test",
        targets=targets,
        scores=scores,
        manifest=manifest,
        val=lambda: _rows(kind, n=40, seed=2),
        stored_thresholds=None,
        unit=kind.target_unit,
        n_bootstrap=20,
        ci=0.95,
        calibration_bins=10,
        threshold_method="youden",
        target_sensitivity=0.9,
        age_bands=kind.default_age_bands() or [0, 40, 60, 80, 200],
    )


@pytest.mark.parametrize("name", POOLED)
def test_kind_evaluates_a_split_into_its_gate_metrics_figures_and_tables(name: str) -> None:
    kind = get_task(name)
    data = _eval_data(kind)
    result = {"task": name, "labels": data.labels, "config": {"ci": data.ci}, **kind.evaluate(data)}
    json.dumps(result)  # the report stores the body as JSON
    headline = {f"test_{k}": v for k, v in kind.headline(result).items()}
    for gate in kind.gate_metrics:
        names = [gate.replace("<label>", metric_key(label)) for label in data.labels] if "<label>" in gate else [gate]
        for metric in names:
            assert np.isfinite(headline[metric]), metric
    # INT8 is judged against FP32 on the number the report headlines.
    name, value = kind.quality_metric(data.labels, data.scores, data.targets)
    assert headline[f"test_{name}"] == value
    figures = kind.figures(data.labels, data.targets, data.scores, result)
    assert figures and {f.plot for f in figures} <= set(typing.get_args(PlotKind))
    assert len({f.file for f in figures}) == len(figures)
    tables = [block for block in kind.summary(result) if isinstance(block, ReportTable)]
    assert tables
    for table in tables:
        for row in (row for rows in table.sections for row in rows):
            assert len(row) == len(table.columns) and all(isinstance(cell, str) for cell in row)


def test_a_loss_that_does_not_fit_the_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not fit a regression dataset; use l1"):
        make_loss("bce", "regression")


def test_multiclass_needs_two_classes() -> None:
    with pytest.raises(DataError, match="at least two classes"):
        get_task("multiclass").check_labels(["only"], np.ones((4, 1)))


@pytest.mark.parametrize("name", POOLED)
def test_kind_outputs_are_in_the_exported_graph(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    kind = get_task(name)
    width = kind.num_outputs(LABELS)
    model = create_model("small_cnn", width, num_extra=len(kind.extra_inputs))
    meta = ModelMeta(
        arch="small_cnn",
        task=name,
        labels=LABELS[:width],
        num_outputs=width,
        extra_inputs=list(kind.extra_inputs),
        preprocess={"size": 16},
        target_unit=kind.target_unit,
        target_mean=100.0 if kind.normalise_targets else None,
        target_std=30.0 if kind.normalise_targets else None,
    )
    path = export_onnx(model, meta, tmp_path / "model.onnx")
    names = {o.name for o in ort.InferenceSession(str(path)).get_outputs()}
    assert {kind.output, CAM_OUTPUT} <= names


def test_task_registry_is_torch_free() -> None:
    code = (
        "import sys, radflow.tasks as t; [t.get_task(n) for n in t.list_tasks()]; "
        "print('torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
