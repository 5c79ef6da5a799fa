"""``radflow sweep`` on the shared two-node Ray cluster: 4 trials as 4 child runs of one parent, a failing trial
marked failed while the others go on, a bad trial stopped early by ASHA, the best registered through the gates and
recorded in sweep.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.config import Params, params_yaml
from radflow.scale.sweep import parse_grid, trial_configs
from radflow.tracking import client, resolve_tracking_uri
from tests.fixtures import make_dataset
from tests.ray_cluster import RayCluster

TINY = {
    "train.epochs": 2,
    "train.max_steps": 3,
    "train.batch_size": 8,
    "train.num_workers": 0,
    "evaluate.n_bootstrap": 20,
    "gates.min_macro_auroc": 0,  # three steps on 60 images is near chance; the gate must still pass
    "gates.min_positives": 1,
    "gates.min_negatives": 1,
    "export.opset": 17,
}


def _workspace(root: Path) -> Path:
    """The parts of a workspace a sweep reads: params.yaml, data/split and the DVC markers find_workspace looks for."""
    root.mkdir()
    (root / "params.yaml").write_text(params_yaml(Params().with_overrides(TINY)))
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / ".dvc").mkdir()
    make_dataset(root / "data" / "split", n=60, size=32)
    return root


def test_four_trial_sweep_registers_the_best_and_survives_a_failing_trial(
    ray_cluster: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow as fluent

    ws = _workspace(tmp_path / "ws")
    # An earlier in-process training run (another test, a notebook) leaves MLflow's fluent URI on its own store
    # (radflow's train() gives the environment variable back; the fluent setting stays): the sweep must still
    # log and register the best trial in the workspace's.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # what teardown restores: as it was before
    fluent.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri wrote it too
    # Trials run one at a time in grid order, so ASHA's first rung (epoch 1) is deterministic: trial 0 (lr 0.01)
    # sets it, and trial 2 (lr 1e-7: its weights barely move from the same seeded start) falls below and stops.
    grid = ["--grid", "train.lr=0.01,1e-7", "--grid", "train.arch=small_cnn,no_such_net", "--max-concurrent", "1"]
    try:
        result = CliRunner().invoke(
            app,
            ["sweep", *grid, "--workspace", str(ws), "--ray", ray_cluster.address, "--name", "s1", "--apply", "--json"],
        )
    finally:
        fluent.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert result.exit_code == 0, result.output
    record = json.loads((ws / "sweeps" / "s1" / "sweep.json").read_text())
    assert json.loads(result.stdout)["trials"] == record["trials"], result.stdout[:3000]  # --json: sweep.json only
    assert [t["status"] for t in record["trials"]] == ["finished", "failed", "stopped", "failed"]
    assert all("no_such_net" in t["error"] for t in record["trials"] if t["status"] == "failed")
    assert record["scheduler"] == {"name": "asha", "grace_epochs": 1, "reduction_factor": 2.0, "max_epochs": 2}
    finished, stopped = record["trials"][0], record["trials"][2]
    assert (finished["epochs"], stopped["epochs"]) == (2, 1)
    assert stopped["value"] < finished["value"] and stopped["error"] is None

    mlflow = client(resolve_tracking_uri(workspace=ws))
    parent = mlflow.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["radflow.sweep"] == "s1"
    children = mlflow.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    by_trial = {int(r.data.tags["radflow.sweep.trial"]): r for r in children}
    assert [by_trial[i].info.status for i in range(4)] == ["FINISHED", "FAILED", "KILLED", "FAILED"]
    assert by_trial[2].data.params["train.lr"] == "1e-07"  # each child is the ordinary training run of its params
    assert by_trial[2].data.tags["radflow.sweep.stopped_at_epoch"] == "1"
    assert [m.step for m in mlflow.get_metric_history(stopped["run_id"], "train_loss")] == [1]  # it stopped there

    best = finished  # the one finished trial: stopped trials are not candidates
    assert record["best"]["run_id"] == best["run_id"] == parent.data.tags["radflow.sweep.best_run"]
    reg = record["registration"]
    assert reg["run_id"] == best["run_id"] and reg["passed"] and reg["alias"] == "challenger"
    version = mlflow.get_model_version(reg["name"], reg["version"])
    assert version.run_id == best["run_id"]
    assert record["chosen_params"] == best["params"]
    assert record["dvc_command"].startswith("radflow run -S train.lr=")
    applied = (ws / "params.yaml").read_text()
    assert f"lr: {best['params']['train.lr']}" in applied


def test_grid_mistakes_are_refused_before_any_trial(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(params_yaml(Params().with_overrides(TINY)))
    (ws / "dvc.yaml").write_text("stages: {}\n")
    (ws / ".dvc").mkdir()
    runner = CliRunner()

    def sweep(*args: str) -> str:
        result = runner.invoke(app, ["sweep", *args, "--workspace", str(ws), "--ray", "127.0.0.1:1"])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    assert "Did you mean 'lr'?" in sweep("--grid", "train.learning_rate=1e-3,3e-3")
    assert "train.lr" in sweep("--grid", "train.lr=0.001,-1")  # lr > 0: a value the schema refuses
    assert "--grid expects KEY=V1,V2" in sweep("--grid", "train.lr")
    assert "--grace-epochs must be at least 1" in sweep("--grid", "train.lr=1e-3,3e-3", "--grace-epochs", "0")
    assert "--reduction-factor must be above 1" in sweep("--grid", "train.lr=1e-3", "--reduction-factor", "1")
    assert "--no-early-stop for data-parallel" in sweep("--grid", "train.workers=1,2")
    assert "no Ray cluster answers at 127.0.0.1:1" in sweep("--grid", "train.lr=1e-3,3e-3")
    assert not (ws / "sweeps").exists() and not (ws / "mlflow.db").exists()  # nothing ran, nothing was recorded


def test_grid_values_are_typed():
    grid = parse_grid(["train.lr=1e-3,3e-3", "train.arch=small_cnn,resnet18", "train.augment.hflip=true,false"])
    assert grid == {
        "train.lr": [0.001, 0.003],
        "train.arch": ["small_cnn", "resnet18"],
        "train.augment.hflip": [True, False],
    }
    assert len(trial_configs(Params(), grid)) == 8
