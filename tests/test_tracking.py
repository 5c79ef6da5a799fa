"""Tracking store resolution, reachability check and the `radflow ui` server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.errors import RadflowError
from radflow.tracking import check_tracking, resolve_tracking_uri, server_command, tracking_uri_scope


def test_a_scoped_tracking_uri_does_not_leak_into_subprocesses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    with tracking_uri_scope(uri):
        assert mlflow.get_tracking_uri() == uri
    # mlflow.set_tracking_uri writes the variable; a DVC stage started later would log into this store
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    with tracking_uri_scope(uri):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"


def test_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(workspace=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(workspace=tmp_path) == "http://mlflow.example:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_unreachable_server_is_a_clear_error() -> None:
    started = time.perf_counter()
    with pytest.raises(RadflowError, match=r"http://127.0.0.1:9 is unreachable.*MLFLOW_TRACKING_URI"):
        check_tracking("http://127.0.0.1:9", timeout=1)
    assert time.perf_counter() - started < 5


def test_ui_command_targets_the_workspace_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["ui", "--workspace", str(tmp_path), "--port", "5123", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"--backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db" in result.output
    assert "--port 5123" in result.output and f"file://{tmp_path.resolve()}/mlartifacts" in result.output
    with pytest.raises(RadflowError, match="already an MLflow server"):
        server_command("http://mlflow.example:5000")


@pytest.mark.parametrize(
    "command",
    [
        ["models"],
        ["rollback", "chest-xray"],
        ["promote", "chest-xray", "1"],
        ["lineage", "models:/chest-xray@champion"],
    ],
)
def test_a_command_outside_a_workspace_leaves_no_mlflow_db(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "no MLflow store at" in result.output and "radflow init" in result.output.replace("\n", " ")
    assert not (tmp_path / "mlflow.db").exists()
