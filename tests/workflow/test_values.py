"""A workflow whose answer is a value (segment -> crop by mask -> regress) judged end to end: MAE, RMSE, bias,
within 12, answered, computed by hand; max_/min_ gates; the steps each child MLflow run logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from radflow.cli import app
from radflow.config import WorkflowConfig
from radflow.data.decode import decode_image
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.split import split_dataset
from radflow.data.synth import synth_hand
from radflow.errors import ConfigError
from radflow.workflow import load_workflow, run_workflow
from radflow.workflow.evaluate import check_gates, evaluate_workflow
from radflow.workflow.values import answer_value, score_values
from tests.serve.models import make_onnx


def _whole(value: float | None, found: bool = True) -> dict[str, Any]:
    return {"answer": {"method": "mean", "prediction": {"value": value, "unit": "months"}}, "found": found}


def _per_crop(*values: float) -> dict[str, Any]:
    return {"answer": {"crops": [{"prediction": {"value": v, "unit": "months"}} for v in values]}, "found": True}


def test_value_metrics_by_hand() -> None:
    assert answer_value(_per_crop(100.0, 110.0)) == 105.0 and answer_value(_whole(None, False)) is None
    answers = [
        ("p1", "a", _whole(130.0), 120.0),  # +10
        ("p2", "b", _per_crop(100.0, 110.0), 125.0),  # 105: -20
        ("p3", "c", _whole(62.0), 60.0),  # +2
        ("p4", "d", _whole(None, False), 90.0),  # no hand found: not answered, not within 12
    ]
    metrics, images = score_values(answers)
    assert metrics["mae"] == pytest.approx(32 / 3) and metrics["bias"] == pytest.approx(-8 / 3)
    assert metrics["rmse"] == pytest.approx(((100 + 400 + 4) / 3) ** 0.5)
    assert metrics["abs_bias"] == pytest.approx(8 / 3)
    assert metrics["within_12"] == 0.5 and metrics["answered"] == 0.75
    assert [i["error"] for i in images] == [10.0, -20.0, 2.0, None] and images[3]["found"] is False
    empty, _ = score_values([("p", "x", _whole(None, False), 1.0)])
    assert empty["mae"] is None and empty["answered"] == 0.0


def test_max_and_min_gates() -> None:
    known = ("mae", "within_12")
    verdict = check_gates({"mae": 14.0, "within_12": 0.4}, {"max_mae": 12, "min_within_12": 0.3}, known)
    assert not verdict["passed"] and [c["passed"] for c in verdict["checks"]] == [False, True]
    assert verdict["checks"][0] == {"metric": "mae", "maximum": 12, "value": 14.0, "passed": False}
    assert verdict["failures"] == ["mae 14.0000 is above the maximum 12"]
    assert check_gates({"mae": None}, {"max_mae": 12}, known)["failures"][0].startswith("mae could not be measured")
    with pytest.raises(ConfigError, match=r"unknown workflow gate 'max_mea'.*Did you mean 'max_mae'"):
        check_gates({}, {"max_mea": 1}, known)
    # the detect -> classify workflow's plain names stay minimums
    assert check_gates({"detection_recall": 0.8}, {"detection_recall": 0.9})["failures"] == [
        "detection_recall 0.8000 is below the minimum 0.9"
    ]


def test_a_segment_crop_regress_workflow_is_judged_on_the_test_split(tmp_path: Path) -> None:
    src = tmp_path / "hands"
    synth_hand(src, 6, seed=1, size=48, workers=1, masks=True)
    ingest(src, "masks", tmp_path / "seg", IngestOptions(size=32, workers=1))
    split_dataset(tmp_path / "seg", val=0.17, test=0.34, seed=0)
    segment = make_onnx(tmp_path / "seg-model", task="segmentation", n=8)
    regress = make_onnx(tmp_path / "age-model", task="regression", n=8)
    config = WorkflowConfig.model_validate({
        "steps": [
            {"name": "hand", "model": str(segment)},
            {"name": "crop", "crop": "mask", "margin": 0.05},
            {"name": "resize", "resize": 32},
            {"name": "age", "model": str(regress)},
            {"name": "months", "aggregate": "mean"},
        ],
        "gates": {"max_mae": 1000.0},
    })  # fmt: skip
    workflow = load_workflow("bone-age", config, threads=1)
    table = src / "boneage-training-dataset.csv"
    result = evaluate_workflow(workflow, tmp_path / "seg", table, "boneage", sex_field="male")
    images = result["images"]
    assert result["params"]["judged"] == "values" and result["counts"]["images"] == len(images) >= 1
    assert result["gates"]["passed"] and result["gates"]["checks"][0]["metric"] == "mae"
    # by hand: each test image through the served code path, its sex from the table (True = M)
    truth = {
        line.split(",")[0]: line.split(",")[1:] for line in table.read_text().splitlines()[1:] if line
    }  # id -> [boneage, male]
    errors = []
    for image in sorted((src / "boneage-training-dataset").glob("*.png")):
        decoded = decode_image(image.read_bytes())
        decoded.meta["sex"] = "M" if truth[image.stem][1] == "True" else "F"
        value = answer_value(run_workflow(workflow, decoded))
        assert value is not None
        errors.append((value, float(truth[image.stem][0])))
    judged = sorted((i["value"], i["truth"]) for i in images)
    assert all(pair in [(pytest.approx(v), t) for v, t in errors] for pair in judged)
    assert result["metrics"]["mae"] == pytest.approx(sum(abs(v - t) for v, t in judged) / len(judged))
    # a child run per step (the same MLflow logging as the spine workflow's, which test_spine reads back)
    assert [s["name"] for s in result["steps"]] == ["hand", "crop", "resize", "age", "months"]
    assert result["steps"][3]["model"]["uri"] == str(regress) and result["mlflow"] is None
    with pytest.raises(ConfigError, match="unknown workflow gate 'max_dice'"):
        evaluate_workflow(workflow, tmp_path / "seg", table, "boneage", gates={"max_dice": 1})
    # `workflow predict --sex`: the regression's second input, as a DICOM's PatientSex would give it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"workflows": {"bone-age": config.model_dump(mode="json")}}))
    image = str(sorted((src / "boneage-training-dataset").glob("*.png"))[0])
    said = {}
    for sex in ("M", "F"):
        run = ["workflow", "predict", "bone-age", image, "--sex", sex, "-w", str(tmp_path), "--json"]
        answered = CliRunner().invoke(app, run)
        assert answered.exit_code == 0, answered.output
        said[sex] = answer_value(json.loads(answered.stdout)["answers"][0]["answer"])
    decoded = decode_image(Path(image).read_bytes())
    decoded.meta["sex"] = "F"
    assert said["F"] == pytest.approx(answer_value(run_workflow(workflow, decoded))) and said["M"] != said["F"]
    shown = CliRunner().invoke(app, ["workflow", "predict", "bone-age", image, "--sex", "M", "-w", str(tmp_path)])
    assert shown.exit_code == 0 and "months:" in shown.output and "months" in shown.output.split("months:")[1]
    assert CliRunner().invoke(app, [*run[:-3], "--sex", "X", "-w", str(tmp_path)]).exit_code == 2
