"""Data-parallel training (`train.workers` = 2, gloo on CPU): one MLflow run, rank 0 checkpoints, a dying rank, resume.

Every spawned rank imports torch and MLflow, so the module launches twice and the assertions share
those runs: a 2-epoch run whose rank 1 dies in epoch 2 (FAILED, rank named), then
``radflow train --workers 2 --resume`` finishing it in the same MLflow run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from radflow.cli import app
from radflow.config import Params
from radflow.errors import ConfigError, RadflowError
from radflow.train.checkpoint import load_checkpoint
from radflow.train.data import ShardBatches, make_loader
from radflow.train.distributed import EXIT_AT_ENV, Group, check_workers
from radflow.train.loop import train
from tests.fixtures import make_dataset

_SETTINGS = {
    "train.workers": 2,
    "train.epochs": 2,
    "train.batch_size": 8,
    "train.max_steps": 2,  # two global steps an epoch: rank 1's 4th step is the 2nd of epoch 2
    "train.num_workers": 0,
    "train.early_stopping_patience": 0,
    "train.threads": 1,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ddp") / "ds", n=40, size=32)


@pytest.fixture(scope="module")
def ddp(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 2-rank run whose rank 1 dies at its 4th step, read back, then resumed from last.pt by the CLI."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("ddp-run")
    uri, ck = f"sqlite:///{root / 'mlflow.db'}", root / "ck"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(RadflowError) as failed:
        mp.setenv(EXIT_AT_ENV, "1:4")
        train(dataset, Params().with_overrides(_SETTINGS), uri, experiment="ddp", out_dir=ck, progress=False)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    after_failure = {
        "error": str(failed.value),
        "status": run.info.status,
        "val_loss_steps": [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")],
        "last_epoch": load_checkpoint(ck / "last.pt")["epoch"],
    }
    args = ["train", str(dataset), "--workers", "2", "--batch-size", "8", "--epochs", "2", "--loader-workers", "0"]
    args += ["-S", "train.max_steps=2", "-S", "train.threads=1", "-S", "train.early_stopping_patience=0"]
    args += ["--tracking-uri", uri, "--experiment", "ddp", "--out-dir", str(ck), "--resume", "--no-evaluate", "--json"]
    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    return {
        "uri": uri,
        "ck": ck,
        "run_id": run.info.run_id,
        "failed": after_failure,
        "resumed": json.loads(resumed.stdout),
    }


def test_a_dying_rank_fails_the_run_and_names_the_rank(ddp: dict[str, Any]) -> None:
    failed = ddp["failed"]
    assert "rank 1 of 2 exited with code 3" in failed["error"] and "marked FAILED" in failed["error"]
    assert failed["status"] == "FAILED"
    # Epoch 1 was logged and checkpointed once; nothing of the half epoch 2.
    assert failed["val_loss_steps"] == [1] and failed["last_epoch"] == 1


def test_resume_finishes_the_same_run_with_one_value_per_metric_and_epoch(ddp: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    resumed, run_id = ddp["resumed"], ddp["run_id"]
    client = MlflowClient(ddp["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] == [resumed["run_id"]]
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["train.workers"] == "2"
    assert runs[0].data.tags["radflow.resumed_at_epoch"] == "1"
    for name in ("train_loss", "val_loss", "val_macro_auroc", "lr", "train_images_per_s"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2], name
    assert resumed["resumed_from_epoch"] == 1 and [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["model_uri"]


def test_rank_zero_writes_the_checkpoints(ddp: dict[str, Any]) -> None:
    ck = ddp["ck"]
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "last.pt"]
    last = load_checkpoint(ck / "last.pt")
    assert last["epoch"] == 2 and last["run_id"] == ddp["run_id"]
    # The replica's weights, not DDP's wrapper: a plain model loads them.
    assert not any(key.startswith("module.") for key in last["model_state"])


def test_the_ranks_split_the_single_process_batches(dataset: Path) -> None:
    from radflow.data.dataset import Dataset

    ds = Dataset.open(dataset)
    rows = ds.indices("train")
    data = ShardBatches(ds, rows, ds.spec, ds.targets(rows))
    seed, epoch = 1_000_003, 3
    gen = torch.Generator()
    gen.manual_seed(seed + epoch)
    single = [x for x, _, _ in make_loader(data, 8, shuffle=True, generator=gen, drop_last=True)]
    ranks = []
    for rank in (0, 1):
        loader, sampler = Group(rank, 2).train_loader(data, 8, seed, num_workers=0, drop_last=True, pin_memory=False)
        sampler.set_epoch(epoch)
        ranks.append([x for x, _, _ in loader])
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for whole, a, b in zip(single, *ranks, strict=True):
        # Same images a step, in some order: compare the sorted per-image sums.
        both = torch.cat([a, b]).flatten(1).sum(1).sort().values
        assert torch.allclose(whole.flatten(1).sum(1).sort().values, both)


def test_worker_counts_that_cannot_run_are_refused_before_any_process() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"batch_size 9 is the global batch.*use 8 or 10"):
        check_workers(2, 9, cpu)
    with pytest.raises(ConfigError, match=r"--workers 64 exceeds the \d+ CPU core"):
        check_workers(64, 64, cpu)
    with pytest.raises(ConfigError, match="at least 1"):
        check_workers(0, 8, cpu)
