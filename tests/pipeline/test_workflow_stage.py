"""The workflow workspace's parts that need no pipeline run: its params, its dvc.yaml, pinning and the drop check."""

from __future__ import annotations

import pytest

from radflow.config import Params
from radflow.errors import ConfigError
from radflow.pipeline.dvc_yaml import dvc_yaml
from radflow.pipeline.workflow import _drops, pin_versions, workflow_workspace_params


def test_spine_workspace_params_route_overrides_to_steps_and_root() -> None:
    root, steps = workflow_workspace_params(
        "spine", {"train.epochs": 2, "vertebra.train.lr": 0.01, "schmorl.data.size": 48, "workflow_stage.iou": 0.4}
    )
    vertebra, schmorl = steps["steps/vertebra"], steps["steps/schmorl"]
    assert (vertebra.train.epochs, schmorl.train.epochs) == (2, 2)  # no prefix: every step
    assert vertebra.train.lr == 0.01 and schmorl.train.lr == Params().train.lr
    assert vertebra.data.synth.kind == "spine" and vertebra.data.format == "coco-boxes"
    assert schmorl.data.source == "crops" and schmorl.data.format == "crops"
    assert root.workflow_stage is not None and root.workflow_stage.iou == 0.4
    # the served crops are resized as the crop step's dataset was cut
    resize = [s for s in root.workflows["spine"].steps if s.resize is not None]
    assert [s.resize for s in resize] == [48]
    with pytest.raises(ConfigError, match="Did you mean 'spine'"):
        workflow_workspace_params("spines")
    with pytest.raises(ConfigError, match=r"STEP\.KEY"):
        workflow_workspace_params("spine", {"train.learning_rate": 1})


def test_each_dvc_yaml_holds_its_own_stages() -> None:
    root, steps = workflow_workspace_params("spine")
    assert list(dvc_yaml(root)["stages"]) == ["workflow"]
    workflow = dvc_yaml(root)["stages"]["workflow"]
    assert "steps/schmorl/models/registration.json" in workflow["deps"]
    assert workflow["params"] == ["workflow_stage", "workflows.spine"]
    crop_stages = dvc_yaml(steps["steps/schmorl"])["stages"]
    assert list(crop_stages)[:2] == ["crops", "split"] and crop_stages["crops"]["deps"][0] == "../vertebra/data/split"
    assert dvc_yaml(steps["steps/vertebra"])["stages"]["synth"]["outs"] == ["data/raw/spine-phantom"]


def test_pinning_and_the_drop_check() -> None:
    root, _ = workflow_workspace_params("spine")
    pinned = pin_versions(root.workflows["spine"], {"spine-schmorl": "3"})
    models = [s.model for s in pinned.steps if s.model]
    assert models == ["models:/spine-vertebrae@champion", "models:/spine-schmorl/3"]
    checks = _drops({"a": 0.80, "b": None}, {"a": 0.90, "b": 0.5}, {"a": 0.05, "b": 0.1})
    assert [c["passed"] for c in checks] == [False, True]
    assert "a drop of 0.1000, beyond max_drop 0.05" in checks[0]["message"]
    assert "not compared" in checks[1]["message"]
