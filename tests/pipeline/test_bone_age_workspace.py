"""`radflow init --workflow bone-age`'s parts that need no pipeline run: each step's params and dvc.yaml, the
workflow the root declares, its values evaluation, and max_drop pointing the right way for an error (MAE)."""

from __future__ import annotations

import pytest

from radflow.config import Params, WorkflowStageConfig
from radflow.errors import ConfigError
from radflow.pipeline.dvc_yaml import dvc_yaml
from radflow.pipeline.workflow import WORKSPACE_WORKFLOWS, _drops, workflow_workspace_params


def test_bone_age_steps_segment_then_regress_on_mask_crops() -> None:
    assert WORKSPACE_WORKFLOWS == ("spine", "bone-age")
    root, steps = workflow_workspace_params("bone-age", {"age.data.size": 48, "age.data.crops.margin": 0.1})
    hand, age = steps["steps/hand"], steps["steps/age"]
    assert hand.data.synth.kind == "hand" and hand.data.synth.masks and hand.data.format == "masks"
    assert hand.train.arch == "small_unet" and age.train.arch == "small_cnn"
    crops = age.data.crops
    assert (crops.task, crops.label, crops.sex_field) == ("regression", "boneage", "male")
    assert crops.masks == "../hand/data/raw/boneage-phantom" and crops.table.endswith("boneage-training-dataset.csv")
    # the served workflow cuts and resizes as the age step's crops were cut: same margin, same size
    served = {s.name: s for s in root.workflows["bone-age"].steps}
    assert (served["crop"].crop, served["crop"].margin, served["crop"].labels) == ("mask", 0.1, ["Hand"])
    assert served["resize"].resize == 48 and served["months"].aggregate == "mean"
    stage = root.workflow_stage
    assert stage is not None and stage.evaluation == "values" and stage.table.endswith("boneage-training-dataset.csv")
    assert root.serve.model == "models:/boneage-hand@champion"


def test_each_dvc_yaml_holds_its_own_stages() -> None:
    root, steps = workflow_workspace_params("bone-age")
    workflow = dvc_yaml(root)["stages"]["workflow"]
    assert "steps/age/models/registration.json" in workflow["deps"]
    assert "steps/hand/data/raw/boneage-phantom/boneage-training-dataset.csv" in workflow["deps"]
    hand = dvc_yaml(steps["steps/hand"])["stages"]
    assert list(hand)[:2] == ["synth", "ingest"] and hand["synth"]["outs"] == ["data/raw/boneage-phantom"]
    age = dvc_yaml(steps["steps/age"])["stages"]
    assert list(age)[:2] == ["crops", "split"]
    assert age["crops"]["deps"] == [
        "../hand/data/split",
        "../hand/data/raw/boneage-phantom/boneage-training-dataset.csv",
        "../hand/data/raw/boneage-phantom",
    ]


def test_the_stage_names_its_truth_and_max_drop_limits_a_rise_of_mae() -> None:
    with pytest.raises(ValueError, match="evaluation values judges against a truth table: set values"):
        WorkflowStageConfig(workflow="w", steps=["s"], dataset="d", label="boneage", evaluation="values")
    with pytest.raises(ConfigError, match="hand phantoms are PNGs"):
        Params().with_overrides({"data.synth.kind": "hand", "data.synth.boxes": True})
    checks = _drops({"mae": 14.0, "within_12": 0.5}, {"mae": 10.0, "within_12": 0.6}, {"mae": 3.0, "within_12": 0.2})
    assert [c["passed"] for c in checks] == [False, True]
    assert "a rise of 4.0000 (an error: lower is better), beyond max_drop 3" in checks[0]["message"]
    assert _drops({"mae": 9.0}, {"mae": 10.0}, {"mae": 0.0})[0]["passed"]  # a lower error is no drop
