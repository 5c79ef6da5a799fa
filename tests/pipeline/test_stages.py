"""Stage logic that needs no pipeline run: resume decisions and the params sections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radflow.config import Params
from radflow.errors import ConfigError
from radflow.pipeline.stages import FINGERPRINT_FILE, can_resume, run_stage, train_fingerprint


def test_train_fingerprint_follows_train_params_and_data_only() -> None:
    base = train_fingerprint(Params(), "v1")
    assert train_fingerprint(Params().with_overrides({"evaluate.n_bootstrap": 5}), "v1") == base
    assert train_fingerprint(Params().with_overrides({"train.lr": 0.5}), "v1") != base
    assert train_fingerprint(Params(), "v2") != base


def test_interrupted_training_resumes_only_with_the_same_fingerprint(tmp_path: Path) -> None:
    assert not can_resume(tmp_path, "abc")  # nothing there
    (tmp_path / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": "abc"}))
    assert not can_resume(tmp_path, "abc")  # no last.pt yet: training never finished an epoch
    (tmp_path / "last.pt").write_bytes(b"x")
    assert can_resume(tmp_path, "abc")
    assert not can_resume(tmp_path, "other")  # a param changed since: start afresh


def test_unknown_stage_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        run_stage("trian", tmp_path)


def test_typed_sections_reject_misspelt_keys_and_keep_dict_equality() -> None:
    params = Params.model_validate({"data": {"source": "nih"}, "split": {"test": 0.2}})
    assert params.data == {"source": "nih"} and params.data.format == "nih"
    assert Params().data.format == "chexpert"  # phantom data is written in CheXpert's layout
    assert params.split.test == 0.2 and params.export.opset == 17 and params.serve.port == 8000
    with pytest.raises(ConfigError, match="Did you mean 'source'"):
        Params().with_overrides({"data.sorce": "nih"})
    with pytest.raises(ConfigError, match=r"data\.source"):
        Params().with_overrides({"data.source": "mri"})


def test_init_writes_params_yaml_with_each_description_as_a_comment(tmp_path: Path) -> None:
    from radflow.config import load_params
    from radflow.pipeline import init_workspace

    init_workspace(tmp_path / "ws", "synthetic", overrides={"train.epochs": 1})
    text = (tmp_path / "ws" / "params.yaml").read_text()
    lines = text.splitlines()
    assert lines[lines.index("  epochs: 1") - 1] == "  # Maximum number of passes over the training split."
    assert "  # PSI at or above this is drift (0.1-0.2 moderate, above 0.2 major)." in lines
    assert load_params(tmp_path / "ws" / "params.yaml").train.epochs == 1
