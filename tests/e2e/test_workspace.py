"""A tiny synthetic workspace run end to end: no-op reruns, param changes, DVC tooling and lineage.

The workspace is the one ``radflow demo --no-serve`` made (tests/pipeline/tiny.py, shared with
tests/e2e/test_demo.py and test_loop.py, which may have registered versions and committed a data
version before these run); the tests run in file order because the last one changes a param.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from radflow.cli import app
from radflow.pipeline import run_pipeline, show_lineage
from radflow.pipeline.dvc_yaml import CHECKPOINTS, METRICS, ROC, TRAIN_METRICS
from radflow.pipeline.lineage import lock_hashes
from radflow.pipeline.run import SIGNATURE_FILE
from radflow.pipeline.stages import FINGERPRINT_FILE
from radflow.tracking import resolve_tracking_uri
from tests.pipeline.tiny import latest_version, tiny_demo

pytestmark = pytest.mark.slow

UPSTREAM = ("synth", "ingest", "split")
DOWNSTREAM = ("train", "evaluate", "export", "register")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = tiny_demo(tmp_path_factory.getbasetemp())
    assert demo.exit_code == 0, demo.output
    return demo.workdir


def _dvc(ws: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _head(ws: Path, ref: str = "HEAD") -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=ws, capture_output=True, text=True).stdout.strip()


def test_second_run_is_a_noop(ws: Path) -> None:
    result = run_pipeline(ws)  # radflow's own signature check: DVC is not even started
    assert result["ran"] == [] and result["experiment"] is None
    assert result["skipped"] == [*UPSTREAM, *DOWNSTREAM]
    assert result["seconds"] < 2  # measured 0.2 s on the 2000-image demo workspace
    (ws / SIGNATURE_FILE).unlink()
    result = run_pipeline(ws)  # and DVC agrees: every stage's deps, outs and params are declared right
    assert result["ran"] == [] and result["experiment"]
    assert result["skipped"] == [*UPSTREAM, *DOWNSTREAM]
    assert (ws / SIGNATURE_FILE).is_file()


def test_lineage_of_the_newest_version_matches_dvc_lock(ws: Path) -> None:
    newest = f"models:/chest-xray/{latest_version(ws)}"  # what the workspace's current dvc.lock made
    lineage = show_lineage(newest, resolve_tracking_uri(workspace=ws))
    lock = lock_hashes(ws)
    for stage in (*UPSTREAM, "train", "evaluate", "export"):
        assert lineage["data_hashes"][stage] == lock[stage], stage
    # the commit the run started from: HEAD, or its parent when the run was the workspace's first
    # (radflow commits the first run's lock and metrics as the baseline for `dvc metrics diff`)
    commit = lineage["git"]["commit"]
    assert commit in (_head(ws), _head(ws, "HEAD~1")) and lineage["git"]["dirty"] is False
    assert lineage["dataset"]["version"] == json.loads((ws / METRICS).read_text())["dataset_version"]
    assert lineage["params"]["train"]["epochs"] == 1
    assert f"git checkout {commit}" in lineage["reproduce"]
    result = CliRunner().invoke(app, ["lineage", newest, "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    assert lock["ingest"]["data/dataset"][:20] in result.output and "dvc pull" in result.output


def test_dvc_metrics_plots_and_remote_work_on_what_stages_write(ws: Path) -> None:
    metrics = json.loads(_dvc(ws, "metrics", "show", "--json"))
    assert "test_macro_auroc" in json.dumps(metrics)
    roc = json.loads((ws / ROC).read_text())["roc"]
    assert roc and {"label", "fpr", "tpr"} <= set(roc[0])
    _dvc(ws, "plots", "show", "-o", str(ws / "plots-html"))
    assert (ws / "plots-html" / "index.html").is_file()
    _dvc(ws, "push")
    assert any((ws / ".dvc-remote").rglob("*"))
    _dvc(ws, "pull")


def _interrupt_after_first_checkpoint(ws: Path, sets: list[str]) -> None:
    """``radflow run -S ...`` in a session of its own, Ctrl-C'd (SIGINT to the group) once training saved epoch 1."""
    checkpoints = ws / CHECKPOINTS
    before = (checkpoints / FINGERPRINT_FILE).read_text()
    log = ws.parent / "interrupted-run.log"
    command = [sys.executable, "-c", "from radflow.cli import main; main()", "run"]
    for item in sets:
        command += ["-S", item]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ws, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                stamp, last = checkpoints / FINGERPRINT_FILE, checkpoints / "last.pt"
                started = stamp.is_file() and stamp.read_text() != before
                if started and last.is_file() and last.stat().st_mtime >= stamp.stat().st_mtime:
                    break  # the new training wrote its first epoch's checkpoint
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be interrupted: " + log.read_text()[-2000:]
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(60) != 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_a_train_param_change_interrupted_in_training_resumes_and_reruns_only_downstream(ws: Path) -> None:
    # One pipeline run serves two checks (each costs a minute on two cores): Ctrl-C during the
    # training a param change started, then the same command again.
    sets = ["train.epochs=2", "train.lr=0.002"]
    new = str(latest_version(ws) + 1)
    _interrupt_after_first_checkpoint(ws, sets)
    result = run_pipeline(ws, sets)
    assert result["training"]["resumed"] is True, result["training"]  # picked up from epoch 1's checkpoint
    assert json.loads((ws / TRAIN_METRICS).read_text())["resumed"] is True
    assert result["ran"] == list(DOWNSTREAM)
    assert result["skipped"] == list(UPSTREAM)
    assert result["registration"]["version"] == new  # the interrupted run registered nothing
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["lr"] == 0.002
    lineage = show_lineage(f"models:/chest-xray/{new}", resolve_tracking_uri(workspace=ws))
    assert lineage["git"]["dirty"] is True  # params.yaml differs from the commit: recorded, not refused
    assert lineage["params_changed"] == sets
    assert "radflow run -S train.epochs=2 -S train.lr=0.002" in lineage["reproduce"]
    lock = lock_hashes(ws)
    assert all(lineage["data_hashes"][s] == lock[s] for s in (*UPSTREAM, "train", "evaluate", "export"))
