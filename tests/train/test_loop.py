"""Training runs end to end on tiny datasets: every task, MLflow read-back, resume, NaN and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from radflow.config import Params
from radflow.data.dataset import Dataset
from radflow.errors import ConfigError, DataError, NotFoundError, RadflowError
from radflow.evaluate.report import evaluate_training
from radflow.tracking import tracking_uri_scope
from radflow.train import loop
from radflow.train.checkpoint import ModelMeta, load_checkpoint, load_model, update_checkpoint_meta
from radflow.train.loop import train
from radflow.train.predict import predict_dataset
from tests.fixtures import make_dataset


def _params(**overrides: object) -> Params:
    # One thread: tiny tensors gain nothing from more, and a busy machine makes extra threads spin.
    base = {
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.num_workers": 0,
        "train.early_stopping_patience": 0,
        "train.threads": 1,
    }
    return Params().with_overrides({**base, **overrides})


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tracking store for the module: creating an MLflow database costs seconds."""
    return _uri(tmp_path_factory.mktemp("mlruns"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    return {
        task: make_dataset(root / task, task=task, n=96 if task != "regression" else 120, size=32)
        for task in ("multilabel", "multiclass", "regression")
    }


@pytest.mark.parametrize("task", ["multilabel", "multiclass", "regression"])
def test_each_task_trains_and_predicts(task: str, datasets: dict[str, Path], store: str, tmp_path: Path) -> None:
    params = _params(**{"train.epochs": 6, "train.lr": 3e-3})
    result = train(datasets[task], params, store, out_dir=tmp_path / "ck", progress=False)
    assert result.epochs_run == 6
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    model, meta = load_model(result.checkpoint_path)
    assert meta.task == task and meta.run_id == result.run_id
    ds = Dataset.open(datasets[task])
    preds = predict_dataset(model, meta, ds, "test")
    assert preds.shape == (len(ds.indices("test")), meta.num_outputs)
    if task == "multilabel":
        assert result.monitor == "val_macro_auroc" and preds.min() >= 0 and preds.max() <= 1
    elif task == "multiclass":
        assert np.allclose(preds.sum(axis=1), 1, atol=1e-5)
    else:
        assert meta.extra_inputs == ["sex"] and meta.target_unit == "months"
        truth = ds.targets(ds.indices("test"))[:, 0]
        # Predictions come back in months, and beat always guessing the training mean.
        assert np.abs(preds[:, 0] - truth).mean() < np.abs(meta.target_mean - truth).mean()


def test_run_is_logged_to_mlflow(datasets: dict[str, Path], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = _uri(tmp_path)
    result = train(datasets["multilabel"], _params(), uri, out_dir=tmp_path / "ck", progress=False)
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    ds = Dataset.open(datasets["multilabel"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.arch"] == "small_cnn" and run.data.params["train.epochs"] == "2"
    assert run.data.params["evaluate.n_bootstrap"] == "1000"
    tags = run.data.tags
    assert tags["radflow.dataset_version"] == ds.version
    assert tags["radflow.task"] == "multilabel"
    assert tags["radflow.git_commit"]
    assert tags["radflow.torch_version"] == torch.__version__
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [1, 2]
    assert len(client.get_metric_history(result.run_id, "val_macro_auroc")) == 2
    assert len(client.get_metric_history(result.run_id, "train_loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "checkpoint")}
    assert artifacts == {"checkpoint/best.pt"}
    local = Path(client.download_artifacts(result.run_id, "checkpoint/best.pt", str(tmp_path / "dl")))
    assert ModelMeta.from_dict(load_checkpoint(local)["meta"]).dataset_version == ds.version
    config = client.download_artifacts(result.run_id, "config/params.yaml", str(tmp_path / "dl"))
    assert "arch: small_cnn" in Path(config).read_text()
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == ds.version
    assert inputs[0].dataset.source and str(datasets["multilabel"].resolve()) in inputs[0].dataset.source
    # The MLflow model carries labels and preprocessing and runs on the preprocessed input.
    import mlflow

    with tracking_uri_scope(uri):  # no MLFLOW_TRACKING_URI left behind for later tests' subprocesses
        pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    assert pyfunc.metadata.metadata["labels"] == ds.labels
    assert pyfunc.metadata.metadata["preprocess"]["size"] == 32
    assert np.asarray(pyfunc.predict(np.zeros((3, 1, 32, 32), np.float32))).shape == (3, 3)
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts sit beside the sqlite store


def test_resume_continues_the_epoch_count_and_run(datasets: dict[str, Path], store: str, tmp_path: Path) -> None:
    uri, ck = store, tmp_path / "ck"
    first = train(datasets["multilabel"], _params(), uri, out_dir=ck, progress=False)
    resumed = train(
        datasets["multilabel"],
        _params(**{"train.epochs": 4}),
        uri,
        out_dir=ck,
        resume=True,
        progress=False,
    )
    assert resumed.run_id == first.run_id
    assert first.resumed_from_epoch is None and resumed.resumed_from_epoch == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    assert load_checkpoint(ck / "last.pt")["epoch"] == 4
    from mlflow.tracking import MlflowClient

    steps = [m.step for m in MlflowClient(uri).get_metric_history(first.run_id, "val_loss")]
    assert steps == [1, 2, 3, 4]


def test_resume_without_checkpoint_says_so(datasets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nothing to resume"):
        train(datasets["multilabel"], _params(), _uri(tmp_path), out_dir=tmp_path, resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    datasets: dict[str, Path], store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = tmp_path / "ck"
    calls = {"n": 0}
    real = loop.make_loss

    def poisoned(*args: object, **kw: object) -> loop.LossFn:
        fn = real(*args, **kw)  # type: ignore[arg-type]

        def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            value = fn(out, y)
            return value * float("nan") if calls["n"] > 4 else value  # epoch 1 has 3 steps

        return loss

    monkeypatch.setattr(loop, "make_loss", poisoned)
    uri = store
    with pytest.raises(RadflowError, match=r"loss became nan at epoch 2.*Last good checkpoint: .*last.pt \(epoch 1\)"):
        train(datasets["multilabel"], _params(**{"train.epochs": 3}), uri, out_dir=ck, progress=False)
    state = load_checkpoint(ck / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model_state"].values() if t.is_floating_point())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("radflow").experiment_id], "attributes.status = 'FAILED'")
    assert len(runs) == 1 and runs[0].data.params["train.epochs"] == "3"


def test_unknown_architecture_fails_before_any_work(datasets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'resnet18'"):
        train(datasets["multilabel"], _params(**{"train.arch": "resnet81"}), _uri(tmp_path), out_dir=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_unsplit_dataset_points_to_radflow_split(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=24, split=False)
    with pytest.raises(DataError, match="radflow split"):
        train(ds, _params(), _uri(tmp_path), out_dir=tmp_path)


def test_all_labels_missing_is_reported(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=30)
    manifest = pd.read_parquet(root / "manifest.parquet")
    info = json.loads((root / "dataset.json").read_text())
    manifest.loc[:, info["labels"]] = np.nan
    manifest.to_parquet(root / "manifest.parquet")
    with pytest.raises(DataError, match="labels are missing"):
        train(root, _params(), _uri(tmp_path), out_dir=tmp_path)


def test_unreachable_tracking_server_fails_before_training(datasets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RadflowError, match="unreachable"):
        train(datasets["multilabel"], _params(), "http://127.0.0.1:9", out_dir=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_update_checkpoint_meta_stores_thresholds(datasets: dict[str, Path], store: str, tmp_path: Path) -> None:
    result = train(datasets["multiclass"], _params(), store, out_dir=tmp_path, progress=False)
    update_checkpoint_meta(result.checkpoint_path, thresholds={"a": 0.4})
    assert load_model(result.checkpoint_path)[1].thresholds == {"a": 0.4}
    with pytest.raises(ConfigError, match="unknown checkpoint meta"):
        update_checkpoint_meta(result.checkpoint_path, threshold=0.5)


def test_train_ends_with_logged_evaluation(datasets: dict[str, Path], store: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = store
    params = _params(**{"evaluate.n_bootstrap": 20})
    result = train(datasets["multilabel"], params, uri, out_dir=tmp_path / "ck", progress=False)
    evaluate_training(result, datasets["multilabel"], params.evaluate)
    assert result.evaluation is not None
    run = MlflowClient(uri).get_run(result.run_id)
    assert "test_macro_auroc" in run.data.metrics
    assert {a.path for a in MlflowClient(uri).list_artifacts(result.run_id, "evaluation")}
    # Evaluation chose thresholds on val and wrote them into the best checkpoint.
    thresholds = load_model(result.checkpoint_path)[1].thresholds
    assert thresholds is not None and set(thresholds) == set(Dataset.open(datasets["multilabel"]).labels)
