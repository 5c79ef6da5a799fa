from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    # `rollback` on an empty store creates it: MLflow logs its table creation at INFO.
    quiet = _radflow(tmp_path, "rollback", "chest-xray", "--tracking-uri", f"sqlite:///{tmp_path / 'a.db'}")
    assert quiet.returncode == 2 and "registry is empty" in quiet.stderr.replace("\n", " ")
    assert "Creating initial MLflow database tables" not in quiet.stdout + quiet.stderr
    loud = _radflow(tmp_path, "-v", "rollback", "chest-xray", "--tracking-uri", f"sqlite:///{tmp_path / 'b.db'}")
    assert "Creating initial MLflow database tables" in loud.stdout + loud.stderr


def test_dvc_warnings_are_notices_and_stage_lines_are_not() -> None:
    assert is_dvc_notice("WARNING: No file hash info found for 'models/x'. It won't be created.")
    assert is_dvc_notice("\x1b[33mWARNING\x1b[39m: No file hash info found for 'data/y'.")
    assert not is_dvc_notice("Running stage 'train':")
    assert not is_dvc_notice("ERROR: failed to reproduce 'train'")
