"""Data-parallel training (``train.workers`` = 2, gloo on CPU): one MLflow run, rank 0's checkpoints, resume, a dying rank.

Every spawned rank imports torch and MLflow, so the module trains once (one epoch, then a resume to
two) and the assertions share that run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from radflow.config import Params
from radflow.errors import ConfigError, RadflowError
from radflow.train.checkpoint import load_checkpoint
from radflow.train.data import ShardBatches, make_loader
from radflow.train.distributed import EXIT_AT_ENV, Group, check_workers
from radflow.train.loop import TrainResult, train
from tests.fixtures import make_dataset


def _params(**overrides: object) -> Params:
    base = {
        "train.workers": 2,
        "train.epochs": 1,
        "train.batch_size": 8,
        "train.num_workers": 0,
        "train.early_stopping_patience": 0,
        "train.threads": 1,
    }
    return Params().with_overrides({**base, **overrides})


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-rank run of one epoch, resumed from its last.pt to two epochs."""
    root = tmp_path_factory.mktemp("ddp")
    ds = make_dataset(root / "ds", n=40, size=32)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    first = train(ds, _params(), uri, experiment="ddp", out_dir=root / "ck", progress=False)
    resumed = train(
        ds, _params(**{"train.epochs": 2}), uri, experiment="ddp", out_dir=root / "ck", resume=True, progress=False
    )
    return {"root": root, "ds": ds, "uri": uri, "first": first, "resumed": resumed}


def test_two_ranks_log_one_run_with_one_value_per_metric_and_epoch(ddp: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    first, resumed = ddp["first"], ddp["resumed"]
    client = MlflowClient(ddp["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.workers"] == "2"
    for name in ("train_loss", "val_loss", "val_macro_auroc", "lr", "train_images_per_s"):
        assert [m.step for m in client.get_metric_history(first.run_id, name)] == [1, 2], name
    assert first.epochs_run == 1 and resumed.resumed_from_epoch == 1
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.history[0] == first.history[0]
    assert resumed.model_uri and client.get_run(first.run_id).data.tags["radflow.resumed_at_epoch"] == "1"


def test_rank_zero_writes_the_checkpoints(ddp: dict[str, Any]) -> None:
    resumed: TrainResult = ddp["resumed"]
    ck = ddp["root"] / "ck"
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "last.pt"]
    last = load_checkpoint(ck / "last.pt")
    assert last["epoch"] == 2 and last["run_id"] == resumed.run_id
    # The replica's weights, not DDP's wrapper: a plain model loads them.
    assert not any(key.startswith("module.") for key in last["model_state"])


def test_a_dying_rank_fails_the_run_and_names_the_rank(
    ddp: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(EXIT_AT_ENV, "1:2")  # rank 1 exits before its second step
    with pytest.raises(RadflowError, match=r"rank 1 of 2 exited with code 3.*marked FAILED"):
        train(ddp["ds"], _params(), ddp["uri"], experiment="ddp-fault", out_dir=ddp["root"] / "f", progress=False)
    client = MlflowClient(ddp["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ddp-fault").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_the_ranks_split_the_single_process_batches(ddp: dict[str, Any]) -> None:
    from radflow.data.dataset import Dataset

    ds = Dataset.open(ddp["ds"])
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
