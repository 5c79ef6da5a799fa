"""A team's shared MLflow: ``radflow tracking-server`` on a real PostgreSQL, a full ``radflow run`` logging into it.

The workspace is a copy of the session's tiny demo workspace (tests/pipeline/tiny.py: 60 phantoms at 32 px,
one epoch) with its local MLflow store removed, pointed at the server with its one setting,
``MLFLOW_TRACKING_URI``; ``radflow run`` with a new train seed reruns train, evaluate, export and register
into the server (the data stages are DVC-cached, so the run costs what a team's next experiment costs).
The same workspace then shares its data through a DVC remote on a local path, as a team's shared folder:
``dvc push`` there, a second clone ``dvc pull``s it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.demo import MODEL_NAME
from radflow.inference import ServeSettings
from radflow.pipeline.dvc_yaml import REGISTRATION
from radflow.pipeline.workspace import init_workspace
from radflow.tracking import DEFAULT_DB
from tests.pipeline.tiny import TINY_SETS, tiny_demo

pytestmark = pytest.mark.slow

_RADFLOW = [sys.executable, "-c", "from radflow.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _create_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    # the bare scheme, as a user writes it: radflow gives it the psycopg 3 driver
    return server_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(URL, artifacts folder) of a ``radflow tracking-server`` on a fresh database, stopped after the module."""
    root = tmp_path_factory.mktemp("tracking-server")
    store = _create_database(postgres_url, "mlflow_shared")
    port = _free_port()
    artifacts = root / "artifacts"
    command = [*_RADFLOW, "tracking-server", "--backend-store-uri", store, "--artifacts-destination", str(artifacts)]
    log = root / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"tracking server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.3)
        yield url, artifacts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh tiny classification workspace (nothing run yet)."""
    from radflow.pipeline.run import parse_sets

    root = tmp_path_factory.mktemp("tracked") / "ws"
    overrides = {
        "data.synth.n": 60,
        "data.synth.size": 256,
        "data.size": 32,
        "train.epochs": 1,
        "registry.name": MODEL_NAME,
        "evaluate.pdf": False,  # the PDF copy needs Chromium: tested in tests/evaluate
        **parse_sets(list(TINY_SETS)),
    }
    init_workspace(root, "synthetic", overrides=overrides)
    return root


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared tiny demo workspace, run once already, without its local MLflow store."""
    demo = tiny_demo(tmp_path_factory.getbasetemp())
    assert demo.exit_code == 0, demo.output
    copy = tmp_path_factory.mktemp("tracked-demo") / "workspace"
    shutil.copytree(demo.workdir, copy, symlinks=True)
    for local in (DEFAULT_DB, "mlruns", "mlartifacts", "serving.db", "serving.db-wal", "serving.db-shm", "inputs"):
        path = copy / local
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return copy


def test_tracking_server_refuses_a_bad_store_and_prints_its_command() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["tracking-server", "--backend-store-uri", "http://mlflow:5000"])
    assert bad.exit_code == 2 and "is not a database URL" in bad.output
    down = runner.invoke(app, ["tracking-server", "--backend-store-uri", f"postgresql://u@127.0.0.1:{_free_port()}/x"])
    assert down.exit_code == 2 and "unreachable" in down.output and "127.0.0.1" in down.output
    dry = runner.invoke(app, ["tracking-server", "--backend-store-uri", "postgresql://u:secret@db/mlflow", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "postgresql+psycopg://u:***@db/mlflow" in dry.output and "secret" not in dry.output
    assert "--serve-artifacts" in dry.output and "--host 127.0.0.1" in dry.output


def test_an_unreachable_tracking_server_fails_the_run_before_any_stage(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", "--workspace", str(workspace)])
    assert result.exit_code == 2 and "unreachable" in result.output, result.output
    assert time.monotonic() - started < 15
    assert not (workspace / "data" / "raw").exists() and not (workspace / "dvc.lock").exists()


def test_a_full_run_logs_and_registers_on_the_shared_server(
    server: tuple[str, Path], demo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    url, artifacts = server
    workspace = demo_copy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the workspace's one setting
    result = CliRunner().invoke(app, ["run", "--workspace", str(workspace), "-S", "train.seed=7"])
    assert result.exit_code == 0, result.output
    assert not (workspace / DEFAULT_DB).exists()  # nothing went to a local store
    assert ServeSettings(workspace=workspace).resolved_tracking_uri() == url  # serving reads the same setting

    registration = json.loads((workspace / REGISTRATION).read_text())
    mlflow = MlflowClient(tracking_uri=url)
    versions = mlflow.search_model_versions(f"name='{MODEL_NAME}'")
    assert [v.version for v in versions] == [str(registration["version"])]
    run = mlflow.get_run(versions[0].run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics and all(isinstance(v, float) for v in run.data.metrics.values())
    assert mlflow.get_metric_history(run.info.run_id, "train_loss")
    # artifacts went through the server (proxied), into its destination folder
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert versions[0].source.startswith(("mlflow-artifacts:/", "models:/", "runs:/")), versions[0].source
    stored = [p.name for p in artifacts.rglob("*") if p.is_file()]
    assert any(name.endswith(".onnx") for name in stored), stored


def _dvc(cwd: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _git(cwd: Path, *args: str) -> None:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_shared_dvc_remote_gives_a_second_clone_the_same_data(demo_copy: Path, tmp_path: Path) -> None:
    workspace = demo_copy
    if not (workspace / "dvc.lock").is_file():
        pytest.skip("the pipeline run above did not complete")
    shared = tmp_path / "team-dvc-remote"  # a mounted share in real life; any path or URL DVC knows works
    _dvc(workspace, "remote", "add", "-d", "shared", str(shared))
    _git(workspace, "add", ".dvc/config", "dvc.lock")
    _git(workspace, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "shared remote", "--allow-empty")
    _dvc(workspace, "push")
    assert any(shared.rglob("*"))

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(workspace), str(clone))
    assert not (clone / "data" / "dataset").exists()
    _dvc(clone, "pull")
    for folder in ("data/dataset", "data/split"):
        ours = sorted(p.relative_to(workspace) for p in (workspace / folder).rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(clone) for p in (clone / folder).rglob("*") if p.is_file())
        assert ours and ours == theirs, folder
        for rel in ours[:20]:
            assert (clone / rel).read_bytes() == (workspace / rel).read_bytes(), rel
    # the data stages are up to date in the clone (training checkpoints are not cached, so not shared)
    assert json.loads(_dvc(clone, "status", "synth", "ingest", "split", "--json") or "{}") == {}
    shutil.rmtree(clone)
