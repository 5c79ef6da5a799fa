from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from radflow.cli import app
from radflow.pipeline.run import is_dvc_notice


def _command_paths(typer_app: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [(*prefix, c.name or c.callback.__name__) for c in typer_app.registered_commands if c.callback]
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        paths += _command_paths(group.typer_instance, (*prefix, group.name or ""))
    return paths


def test_every_command_has_help() -> None:
    runner = CliRunner()
    paths = _command_paths(app)
    assert ("ingest",) in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("radflow ")


def _radflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RADFLOW_"))}
    command = [sys.executable, "-c", "from radflow.cli import main; main()", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_mlflow_logs_only_with_verbose(tmp_path: Path) -> None:
    # `rollback` on an empty (0-byte) store file makes MLflow create its tables, which it logs at INFO.
    # Both commands run at once: each spends most of its ~10 s importing MLflow.
    (tmp_path / "a.db").touch()
    (tmp_path / "b.db").touch()
    with ThreadPoolExecutor(2) as pool:
        quiet_run = pool.submit(
            _radflow, tmp_path, "rollback", "chest-xray", "--tracking-uri", f"sqlite:///{tmp_path / 'a.db'}"
        )
        loud_run = pool.submit(
            _radflow, tmp_path, "-v", "rollback", "chest-xray", "--tracking-uri", f"sqlite:///{tmp_path / 'b.db'}"
        )
        quiet, loud = quiet_run.result(), loud_run.result()
    assert quiet.returncode == 2 and "registry is empty" in quiet.stderr.replace("\n", " ")
    assert "Creating initial MLflow database tables" not in quiet.stdout + quiet.stderr
    assert "Creating initial MLflow database tables" in loud.stdout + loud.stderr


def test_dvc_warnings_are_notices_and_stage_lines_are_not() -> None:
    assert is_dvc_notice("WARNING: No file hash info found for 'models/x'. It won't be created.")
    assert is_dvc_notice("\x1b[33mWARNING\x1b[39m: No file hash info found for 'data/y'.")
    assert not is_dvc_notice("Running stage 'train':")
    assert not is_dvc_notice("ERROR: failed to reproduce 'train'")


def test_run_exits_1_when_a_gate_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    import radflow.pipeline.run as run_module

    def fake_run(*args: object, **kwargs: object) -> dict[str, object]:
        registration = {"name": "chest-xray", "version": "3", "passed": False, "failures": ["test_macro_auroc 0.61"]}
        return {
            "workspace": "ws",
            "ran": ["register"],
            "skipped": [],
            "experiment": None,
            "seconds": 1.0,
            "stage_seconds": {},
            "metrics": {},
            "training": {},
            "registration": registration,
            "gates_passed": False,
        }

    monkeypatch.setattr(run_module, "run_pipeline", fake_run)
    failed = CliRunner().invoke(app, ["run"])
    assert failed.exit_code == 1, failed.output
    assert "gates failed" in failed.output and "test_macro_auroc 0.61" in failed.output
    monkeypatch.setattr(run_module, "run_pipeline", lambda *a, **k: {**fake_run(), "gates_passed": True})
    assert CliRunner().invoke(app, ["run", "--json"]).exit_code == 0


def test_train_refuses_another_runs_checkpoints_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from radflow.cli.train import _checkpoint_folder
    from radflow.train.checkpoint import ModelMeta, save_checkpoint
    from radflow.train.models import create_model

    shared = tmp_path / "shared"
    meta = ModelMeta(arch="small_cnn", task="multilabel", labels=["a"], num_outputs=1, run_id="run-of-alice")
    save_checkpoint(shared / "best.pt", create_model("small_cnn", 1), meta)
    refused = CliRunner().invoke(app, ["train", str(tmp_path / "ds"), "--out-dir", str(shared)])
    assert refused.exit_code == 2
    assert "holds the checkpoints (best.pt) of run run-of-alice" in refused.output.replace("\n", " ")
    assert _checkpoint_folder(shared, "small_cnn", resume=False, overwrite=True) == shared
    assert _checkpoint_folder(shared, "small_cnn", resume=True, overwrite=False) == shared
    # Without --out-dir each run gets a folder of its own, and --resume finds the newest one.
    monkeypatch.chdir(tmp_path)
    first = _checkpoint_folder(None, "small_cnn", resume=False, overwrite=False)
    assert first.parent == Path("checkpoints") and first.name.startswith("small_cnn-")
    save_checkpoint(first / "last.pt", create_model("small_cnn", 1), meta)
    second = _checkpoint_folder(None, "small_cnn", resume=False, overwrite=False)
    assert second != first
    assert _checkpoint_folder(None, "small_cnn", resume=True, overwrite=False).resolve() == first.resolve()


def test_params_lists_every_key_with_default_and_meaning() -> None:
    import json

    runner = CliRunner()
    plain = runner.invoke(app, ["params", "train"])
    assert plain.exit_code == 0, plain.output
    lines = plain.stdout.splitlines()
    assert any(line.startswith("train.lr=0.001 ") and line.endswith("Initial learning rate. (float)") for line in lines)
    assert all(line.startswith("train.") for line in lines) and "train.augment.hflip=false" in plain.stdout
    as_json = runner.invoke(app, ["params", "--json"])
    rows = {row["key"]: row for row in json.loads(as_json.stdout)}
    assert rows["gates.min_macro_auroc"]["default"] == 0.8 and rows["serve.port"]["default"] == 8000
    misspelt = runner.invoke(app, ["params", "trian"])
    assert misspelt.exit_code == 2 and "Did you mean 'train'?" in misspelt.output


def test_help_lists_the_settings_and_shows_flags_without_a_value() -> None:
    runner = CliRunner()
    run_help = " ".join(runner.invoke(app, ["run", "--help"]).output.split())
    assert "radflow params" in run_help and "train: arch, epochs, batch_size, lr," in run_help
    register_help = " ".join(runner.invoke(app, ["register", "--help"]).output.split())
    assert "gates: min_macro_auroc, max_label_drop" in register_help and "train:" not in register_help
    for command in ("register", "promote", "ingest", "init"):
        output = runner.invoke(app, [command, "--help"]).output
        assert "<bool>" not in output and "--json" in output, (command, output)
    assert "KEY=VALUE" in runner.invoke(app, ["init", "--help"]).output


def test_evaluate_prints_its_table_full_width_when_piped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from radflow.data.dataset import Dataset
    from radflow.train.checkpoint import ModelMeta, save_checkpoint
    from radflow.train.models import create_model
    from tests.fixtures import make_dataset

    monkeypatch.delenv("COLUMNS", raising=False)
    labels = ("Enlarged Cardiomediastinum", "Cardiomegaly")
    ds_path = make_dataset(tmp_path / "ds", n=40, size=32, labels=labels)
    ds = Dataset.open(ds_path)
    meta = ModelMeta(arch="small_cnn", task="multilabel", labels=ds.labels, num_outputs=2, preprocess=ds.spec.to_dict())
    checkpoint = save_checkpoint(tmp_path / "m.pt", create_model("small_cnn", 2), meta)
    result = CliRunner().invoke(
        app, ["evaluate", str(checkpoint), "--dataset", str(ds_path), "--n-bootstrap", "20", "-o", str(tmp_path / "e")]
    )
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    rows = [line for line in result.output.splitlines() if "Cardiome" in line]
    assert any("Enlarged Cardiomediastinum" in row for row in rows) and any("│ Cardiomegaly " in r for r in rows)
    assert any(row.count("[") == 1 and row.count("]") == 1 for row in rows)  # the CI in one piece


def test_ingest_of_dicom_without_labels_says_what_the_dataset_is_for(tmp_path: Path) -> None:
    import numpy as np

    from radflow.data.dicom import write_dicom

    src = tmp_path / "pacs"
    src.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 4000, (40, 36), dtype=np.uint16)
        write_dicom(src / f"img{i}", pixels, bits_stored=12, attributes={"PatientID": f"P{i}"}, uid_seed=str(i))
    result = CliRunner().invoke(
        app, ["ingest", str(src), "--format", "dicom", "--out", str(tmp_path / "ds"), "--size", "32", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "has no labels: it can be scored (`radflow score`)" in text and "pass --labels-csv" in text
