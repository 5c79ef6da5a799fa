"""`radflow train` parses flags, params.yaml and -S overrides, prints JSON, and reports mistakes in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radflow.cli import app
from tests.fixtures import make_dataset


def test_train_json_with_config_and_overrides(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=48)
    config = tmp_path / "params.yaml"
    config.write_text("train:\n  epochs: 5\n  batch_size: 8\n  num_workers: 0\n")
    args = ["train", str(ds), "--config", str(config), "--epochs", "1", "-S", "train.max_steps=2", "--json"]
    args += [
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--out-dir",
        str(tmp_path / "ck"),
        "--no-evaluate",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["epochs_run"] == 1  # --epochs beats the file
    assert Path(out["checkpoint_path"]).is_file() and out["monitor"] == "val_macro_auroc"
    assert out["model_uri"].startswith("models:/")


def test_train_mistakes_exit_2_with_one_line(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=24, split=False)
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(ds), "--arch", "resnet_18"])
    assert result.exit_code == 2 and "Did you mean 'resnet18'" in result.output
    result = runner.invoke(app, ["train", str(ds)])
    assert result.exit_code == 2 and "radflow split" in result.output
    result = runner.invoke(app, ["train", str(ds), "-S", "train.lr"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_train_a_segmentation_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset(tmp_path / "ds", task="segmentation", n=12, patients=6)
    monkeypatch.chdir(tmp_path)
    # no --arch: the classifier default gives way to the kind's own network, and the run folder says so
    args = ["train", str(ds), "--epochs", "1", "-S", "train.max_steps=2", "--json"]
    args += ["-S", "train.num_workers=0", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-evaluate"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["monitor"] == "val_mean_dice" and 0 <= out["history"][0]["val_mean_dice"] <= 1
    assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints").iterdir()] == ["small_unet"]


def test_train_render_says_where_a_resume_started(capsys: pytest.CaptureFixture[str]) -> None:
    from radflow.cli.train import _render

    rows = [{"epoch": e, "train_loss": 0.5, "val_loss": 0.6, "val_macro_auroc": 0.7, "lr": 1e-3} for e in (1, 2, 3, 4)]
    result = {
        "monitor": "val_macro_auroc",
        "history": rows,
        "warnings": [],
        "best_metric": 0.7,
        "run_id": "abc",
        "tracking_uri": "sqlite:///m.db",
        "checkpoint_path": "ck/best.pt",
        "model_uri": "models:/m/1",
    }
    _render({**result, "resumed_from_epoch": 2})
    assert "resumed from epoch 2: 2 more epoch(s) run" in capsys.readouterr().err
    _render({**result, "resumed_from_epoch": None})
    assert "resumed" not in capsys.readouterr().err
