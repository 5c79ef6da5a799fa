"""The gated registry against a real SQLite MLflow store: gates, aliases, promote/rollback, model lookup.

Runs are made directly with mlflow (metrics and tags as the training loop logs them, a tiny torch
model as ``model``, a real checkpoint as ``checkpoint/best.pt``), so the gate tests do not train;
the last test trains a few steps to check the loop -> evaluate_and_log -> register chain. One store
serves the whole module because creating an MLflow database takes seconds; each test uses its own
registered-model name.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from radflow.cli import app
from radflow.config import GateConfig
from radflow.errors import NotFoundError, RadflowError
from radflow.evaluate.report import write_predictions
from radflow.registry import (
    EVAL_DATASET_TAG,
    PREVIOUS_CHAMPION_TAG,
    promote,
    register,
    resolve_model,
    resolve_model_run,
    rollback,
)
from radflow.tracking import ensure_experiment
from radflow.train.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from radflow.train.models import create_model

LABELS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]


@dataclass
class Store:
    uri: str
    experiment_id: str
    checkpoint: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    meta = ModelMeta(arch="small_cnn", task="multilabel", labels=LABELS, num_outputs=3, preprocess={"size": 32})
    checkpoint = save_checkpoint(root / "best.pt", create_model("small_cnn", 3), meta)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield Store(uri, ensure_experiment(uri, "registry-tests"), checkpoint)
        finally:
            mlflow.set_tracking_uri(None)


def _name() -> str:
    return f"chest-{uuid.uuid4().hex[:8]}"


def make_run(
    store: Store,
    aurocs: dict[str, float] | None = None,
    *,
    mae: float | None = None,
    dataset_version: str = "ds-v1",
    model: bool = True,
    counts: dict[str, tuple[int, int]] | None = None,
    predictions: tuple[np.ndarray, np.ndarray] | None = None,
) -> str:
    """A finished run laid out like a `radflow train` run; ``aurocs`` per label -> macro is their mean.

    ``counts`` logs (positives, negatives) per label as the evaluation does; ``predictions``
    ``(targets, scores)`` logs the per-image test predictions (and the AUROCs, counts they give).
    """
    import mlflow
    import mlflow.pytorch
    import torch

    metrics: dict[str, float] = {}
    if predictions is not None:
        targets, scores = predictions
        aurocs = {label: float(roc_auc_score(targets[:, j], scores[:, j])) for j, label in enumerate(LABELS)}
        counts = {
            label: (int((targets[:, j] == 1).sum()), int((targets[:, j] == 0).sum())) for j, label in enumerate(LABELS)
        }
    if aurocs is not None:
        metrics["test_macro_auroc"] = sum(aurocs.values()) / len(aurocs)
        metrics.update({f"test_auroc_{label.replace(' ', '_')}": v for label, v in aurocs.items()})
    for label, (positives, negatives) in (counts or {}).items():
        metrics[f"test_positives_{label.replace(' ', '_')}"] = positives
        metrics[f"test_negatives_{label.replace(' ', '_')}"] = negatives
    if mae is not None:
        metrics["test_mae"] = mae
    with mlflow.start_run(experiment_id=store.experiment_id) as run:
        mlflow.set_tags(
            {
                "radflow.dataset_version": dataset_version,
                "radflow.git_commit": "0123abcd",
                "radflow.task": "regression" if mae is not None else "multilabel",
                EVAL_DATASET_TAG: dataset_version,
            }
        )
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(store.checkpoint), "checkpoint")
        if predictions is not None:
            folder = store.checkpoint.parent / run.info.run_id
            folder.mkdir()
            n = len(predictions[0])
            manifest = pd.DataFrame(
                {"image_id": [f"img{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)]}
            )
            write_predictions(folder / "predictions.parquet", manifest, LABELS, *predictions)
            mlflow.log_artifact(str(folder / "predictions.parquet"), "evaluation")
        if model:
            mlflow.pytorch.log_model(
                torch.nn.Linear(2, 1), name="model", pip_requirements=["torch"], serialization_format="pickle"
            )
    return run.info.run_id


def _client(store: Store):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(store.uri)


def _alias(client, name: str, alias: str) -> str:  # type: ignore[no-untyped-def]
    return str(client.get_model_version_by_alias(name, alias).version)


GOOD = {"Cardiomegaly": 0.92, "Pleural Effusion": 0.9, "Pneumothorax": 0.88}


def test_passing_run_becomes_challenger_with_lineage_tags(store: Store) -> None:
    name = _name()
    run_id = make_run(store, GOOD)
    result = register(run_id, name, GateConfig(min_macro_auroc=0.8), store.uri)
    assert result["passed"] and result["version"] == "1" and result["alias"] == "challenger"
    client = _client(store)
    assert _alias(client, name, "challenger") == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["radflow.dataset_version"] == "ds-v1"
    assert tags["radflow.git_commit"] == "0123abcd"
    assert tags["test_macro_auroc"] == "0.9000"
    assert tags["gate"] == "passed"


def test_failing_macro_auroc_names_the_metric_and_sets_no_alias(store: Store) -> None:
    name = _name()
    register(make_run(store, GOOD), name, GateConfig(), store.uri)
    weak = {"Cardiomegaly": 0.7, "Pleural Effusion": 0.72, "Pneumothorax": 0.74}
    result = register(make_run(store, weak), name, GateConfig(min_macro_auroc=0.8), store.uri)
    assert not result["passed"] and result["alias"] is None
    (failure,) = result["failures"]
    assert failure["metric"] == "test_macro_auroc"
    assert "0.7200" in failure["message"] and "0.8" in failure["message"]
    client = _client(store)
    # The earlier challenger keeps its alias; the failed version stays registered, tagged.
    assert _alias(client, name, "challenger") == "1"
    assert client.get_model_version(name, "2").tags["gate"] == "failed"


def test_label_drop_against_champion_on_the_same_split(store: Store) -> None:
    name = _name()
    register(make_run(store, GOOD), name, GateConfig(), store.uri)
    promote(name, "1", store.uri)
    worse = {**GOOD, "Pneumothorax": 0.85}  # 0.03 below the champion; macro still high
    failed = register(make_run(store, worse), name, GateConfig(max_label_drop=0.02), store.uri)
    assert not failed["passed"]
    assert [f["metric"] for f in failed["failures"]] == ["test_auroc_Pneumothorax"]
    assert "below champion v1" in failed["failures"][0]["message"]
    slight = {**GOOD, "Pneumothorax": 0.87}
    assert register(make_run(store, slight), name, GateConfig(max_label_drop=0.02), store.uri)["passed"]


def test_champion_on_another_dataset_version_is_not_compared(store: Store) -> None:
    name = _name()
    register(make_run(store, GOOD), name, GateConfig(), store.uri)
    promote(name, "1", store.uri)
    worse = {**GOOD, "Pneumothorax": 0.81}
    result = register(make_run(store, worse, dataset_version="ds-v2"), name, GateConfig(), store.uri)
    assert result["passed"]
    assert any("ds-v1" in note and "ds-v2" in note and "skipped" in note for note in result["notes"])


def test_regression_mae_gates(store: Store) -> None:
    name = _name()
    assert register(make_run(store, mae=10.0), name, GateConfig(max_mae_months=12), store.uri)["passed"]
    promote(name, "1", store.uri)
    too_high = register(make_run(store, mae=13.0), name, GateConfig(max_mae_months=12), store.uri)
    assert [f["gate"] for f in too_high["failures"]] == ["max_mae_months", "max_mae_increase"]
    worse = register(make_run(store, mae=11.5), name, GateConfig(max_mae_increase=1.0), store.uri)
    assert [f["gate"] for f in worse["failures"]] == ["max_mae_increase"]


def test_promote_and_repeated_rollback(store: Store) -> None:
    name = _name()
    for _ in range(3):
        register(make_run(store, GOOD), name, GateConfig(), store.uri)
    client = _client(store)
    for version in ("1", "2", "3"):
        promote(name, version, store.uri)
        assert _alias(client, name, "champion") == version
    # Promoting the challenger consumes its alias.
    assert "challenger" not in client.get_registered_model(name).aliases
    assert rollback(name, store.uri) == {"name": name, "version": "2", "replaced": "3", "history": ["1"]}
    assert _alias(client, name, "champion") == "2"
    assert rollback(name, store.uri)["version"] == "1"
    with pytest.raises(RadflowError, match="nothing to roll back"):
        rollback(name, store.uri)
    assert client.get_registered_model(name).tags[PREVIOUS_CHAMPION_TAG] == "[]"


def test_rollback_without_history_and_unknown_names(store: Store) -> None:
    name = _name()
    register(make_run(store, GOOD), name, GateConfig(), store.uri)
    with pytest.raises(RadflowError, match="nothing to roll back"):
        rollback(name, store.uri)
    with pytest.raises(NotFoundError, match="no registered model"):
        rollback(name + "x", store.uri)
    with pytest.raises(NotFoundError, match="no version 7"):
        promote(name, "7", store.uri)


def test_gate_failed_version_needs_force_to_be_promoted(store: Store) -> None:
    name = _name()
    register(
        make_run(store, {"Cardiomegaly": 0.5, "Pleural Effusion": 0.5, "Pneumothorax": 0.5}), name, None, store.uri
    )
    with pytest.raises(RadflowError, match="failed its quality gates"):
        promote(name, "1", store.uri)
    assert promote(name, "1", store.uri, force=True)["version"] == "1"


def test_resolve_model_every_uri_form(store: Store) -> None:
    name = _name()
    first, second = make_run(store, GOOD), make_run(store, GOOD)
    register(first, name, GateConfig(), store.uri)
    register(second, name, GateConfig(), store.uri)
    promote(name, "1", store.uri)
    assert resolve_model(str(store.checkpoint)) == store.checkpoint
    assert resolve_model(str(store.checkpoint.parent)) == store.checkpoint
    for uri, run_id in [
        (first, first),
        (f"runs:/{second}", second),
        (f"runs:/{second}/model", second),
        (f"models:/{name}@champion", first),
        (f"models:/{name}@challenger", second),
        (f"models:/{name}/2", second),
    ]:
        path, resolved_run = resolve_model_run(uri, store.uri)
        assert resolved_run == run_id, uri
        assert load_checkpoint(path)["meta"]["labels"] == LABELS


def test_resolve_model_unknown_things_are_not_found(store: Store) -> None:
    name = _name()
    register(make_run(store, GOOD), name, GateConfig(), store.uri)
    with pytest.raises(NotFoundError) as err:
        resolve_model(f"models:/{name}@champion", store.uri)
    assert str(err.value) == (
        f"models:/{name}@champion not found: no version holds @champion yet; version 1 holds @challenger — "
        f"promote it with `radflow promote {name} 1`."
    )
    with pytest.raises(NotFoundError, match=r"no alias 'champoin'\. Did you mean 'champion'"):
        resolve_model(f"models:/{name}@champoin", store.uri)
    with pytest.raises(NotFoundError, match=rf"no registered model '{name[:-1]}'.*Did you mean '{name}'") as err:
        resolve_model(f"models:/{name[:-1]}@champion", store.uri)
    assert name in str(err.value).split("Registered models: ")[1]
    failed = _name()
    register(
        make_run(store, {"Cardiomegaly": 0.5, "Pleural Effusion": 0.5, "Pneumothorax": 0.5}), failed, None, store.uri
    )
    with pytest.raises(NotFoundError, match=r"no version holds @champion yet \(`radflow register` sets @challenger"):
        resolve_model(f"models:/{failed}@champion", store.uri)
    with pytest.raises(NotFoundError, match="no MLflow run"):
        resolve_model("0" * 32, store.uri)
    with pytest.raises(NotFoundError, match="not a checkpoint file"):
        resolve_model("no-such-model.pt", store.uri)
    no_checkpoint_run = make_run(store, GOOD, model=False)
    with pytest.raises(NotFoundError, match="no logged model"):
        register(no_checkpoint_run, name, GateConfig(), store.uri)


def test_cli_register_exit_code_and_promote_rollback(store: Store) -> None:
    name = _name()
    runner = CliRunner()
    good = runner.invoke(app, ["register", make_run(store, GOOD), "--name", name, "--tracking-uri", store.uri])
    assert good.exit_code == 0, good.output
    weak = {"Cardiomegaly": 0.6, "Pleural Effusion": 0.6, "Pneumothorax": 0.6}
    bad = runner.invoke(app, ["register", make_run(store, weak), "--name", name, "--tracking-uri", store.uri])
    assert bad.exit_code == 1
    assert "test_macro_auroc 0.6000 < min_macro_auroc 0.8" in bad.output
    promoted = runner.invoke(app, ["promote", name, "1", "--tracking-uri", store.uri, "--json"])
    assert promoted.exit_code == 0 and '"version": "1"' in promoted.stdout
    nothing = runner.invoke(app, ["rollback", name, "--tracking-uri", store.uri])
    assert nothing.exit_code == 2 and "nothing to roll back" in nothing.output


def test_training_run_is_evaluated_logged_and_registered(store: Store, tmp_path: Path) -> None:
    """Training then evaluate_training (as `radflow train` does): the run carries what `radflow register` gates on."""
    from radflow.config import Params
    from radflow.data.dataset import Dataset
    from radflow.evaluate.report import evaluate_training
    from radflow.train.loop import train
    from tests.fixtures import make_dataset

    ds_path = make_dataset(tmp_path / "ds", n=90, size=32)
    uri = store.uri
    params = Params().with_overrides(
        {
            "train.epochs": 2,
            "train.batch_size": 16,
            "train.num_workers": 0,
            "train.max_steps": 2,
            "evaluate.n_bootstrap": 50,
            "gates.min_macro_auroc": 0.0,
        }
    )
    result = train(ds_path, params, uri, out_dir=tmp_path / "ck", progress=False)
    evaluate_training(result, ds_path, params.evaluate)
    client = _client(store)
    run = client.get_run(result.run_id)
    assert 0.0 <= run.data.metrics["test_macro_auroc"] <= 1.0
    assert run.data.tags["radflow.eval_dataset_version"] == Dataset.open(ds_path).version
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/roc.png", "evaluation/calibration.png"} <= artifacts

    # Through the CLI, as a user registers: the logged report's gates section then holds the verdicts.
    params_file = tmp_path / "params.yaml"
    params_file.write_text("gates:\n  min_macro_auroc: 0.0\n")
    cli = CliRunner().invoke(
        app,
        ["register", result.run_id, "--name", name := _name(), "-c", str(params_file), "--tracking-uri", uri, "--json"],
    )
    assert cli.exit_code == 0, cli.output
    registered = json.loads(cli.stdout)
    assert registered["passed"] and registered["alias"] == "challenger"
    report = Path(client.download_artifacts(result.run_id, "evaluation/report.html", str(tmp_path / "dl"))).read_text()
    assert "Not gated yet" not in report and "challenger" in report
    checkpoint, run_id = resolve_model_run(f"models:/{name}@challenger", uri)
    assert run_id == result.run_id
    # The re-logged checkpoint carries the thresholds chosen on val.
    thresholds = load_checkpoint(checkpoint)["meta"]["thresholds"]
    assert set(thresholds) == set(Dataset.open(ds_path).labels)


@pytest.mark.parametrize(
    ("metrics", "tags", "gate"),
    [
        ({"test_mae": 5.0}, {}, "max_mae_months"),
        ({"test_mae": 5.0}, {"radflow.task": "regression"}, "max_mae_months"),
        ({"test_macro_auroc": 0.9}, {"radflow.task": "multiclass"}, "min_macro_auroc"),
        ({"test_mae": 5.0}, {"radflow.task": "a-task-from-a-newer-radflow"}, "max_mae_months"),
        ({}, {}, "min_macro_auroc"),
    ],
)
def test_gates_follow_the_runs_task_kind(metrics: dict[str, float], tags: dict[str, str], gate: str) -> None:
    from radflow.registry.gates import check_gates

    outcome = check_gates(metrics, tags, GateConfig(max_mae_months=10.0))
    assert [c["gate"] for c in outcome["checks"]] == [gate]


@pytest.mark.parametrize(
    ("metrics", "tags"),
    [
        ({"test_mean_dice": 0.45, "test_macro_auroc": 0.99, "test_auroc_Lung": 0.99}, {"radflow.task": "segmentation"}),
        ({"test_mean_dice": 0.45}, {}),  # no task tag: the kind whose first gate metric the run logged
    ],
)
def test_a_segmentation_run_is_judged_by_dice_not_auroc(metrics: dict[str, float], tags: dict[str, str]) -> None:
    from radflow.registry.gates import EVAL_HELD_OUT_TAG, check_gates

    champion = {"version": "1", "metrics": {"test_auroc_Lung": 0.5}, "tags": {EVAL_HELD_OUT_TAG: "split-1"}}
    outcome = check_gates(metrics, {**tags, EVAL_HELD_OUT_TAG: "split-1"}, GateConfig(), champion)
    assert [c["gate"] for c in outcome["checks"]] == ["min_mean_dice"]  # no AUROC gate, no AUROC comparison
    assert not outcome["passed"] and "test_mean_dice 0.4500 < min_mean_dice 0.5" in outcome["failures"][0]["message"]


def test_dice_gates_per_structure_and_against_the_champion() -> None:
    from radflow.registry.gates import EVAL_HELD_OUT_TAG, check_gates

    tags = {"radflow.task": "segmentation", EVAL_HELD_OUT_TAG: "split-1"}
    metrics = {"test_mean_dice": 0.9, "test_dice_Heart": 0.88, "test_dice_Left_Lung": 0.97, "test_dice_Lesion": 0.2}
    gates = GateConfig(min_dice={"Heart": 0.9, "Left Lung": 0.95, "Pneumothorax": 0.5}, max_dice_drop=0.02)
    champion = {
        "version": "3",
        "metrics": {"test_dice_Heart": 0.89, "test_dice_Left_Lung": 0.995, "test_dice_Lesion": 0.1},
        "tags": {EVAL_HELD_OUT_TAG: "split-1"},
    }
    outcome = check_gates(metrics, tags, gates, champion)
    verdicts = {(c["gate"], c["metric"]): c["passed"] for c in outcome["checks"]}
    assert verdicts == {
        ("min_mean_dice", "test_mean_dice"): True,
        ("min_dice", "test_dice_Heart"): False,  # 0.88 < 0.9
        ("min_dice", "test_dice_Left_Lung"): True,
        ("min_dice", "test_dice_Pneumothorax"): False,  # named but never scored: not passed silently
        ("max_dice_drop", "test_dice_Heart"): True,  # 0.01 below the champion
        ("max_dice_drop", "test_dice_Left_Lung"): False,  # 0.025 below
        ("max_dice_drop", "test_dice_Lesion"): True,
    }
    missing = next(c for c in outcome["failures"] if c["metric"] == "test_dice_Pneumothorax")
    assert "Heart, Left_Lung, Lesion" in missing["message"]
    assert any("point estimates" in note for note in outcome["notes"])
    other_split = {**champion, "tags": {EVAL_HELD_OUT_TAG: "split-2"}}
    assert not [c for c in check_gates(metrics, tags, gates, other_split)["checks"] if c["gate"] == "max_dice_drop"]


def _test_split(seed: int = 10, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets, a champion's scores and a challenger's that is the champion plus noise (2 images per patient)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.3).astype(float)
    champion = y * 1.5 + rng.normal(0, 1, (n, 3))
    return y, champion, champion + rng.normal(0, 0.6, (n, 3))


def test_a_label_with_one_positive_is_not_gated(store: Store) -> None:
    name = _name()
    register(make_run(store, GOOD, counts=dict.fromkeys(LABELS, (40, 160))), name, GateConfig(), store.uri)
    promote(name, "1", store.uri)
    # Pneumothorax: 0.25 lower on the one positive image of the test split: that image's rank, not a model property.
    one_positive = {**dict.fromkeys(LABELS, (40, 160)), "Pneumothorax": (1, 199)}
    result = register(
        make_run(store, {**GOOD, "Pneumothorax": 0.63}, counts=one_positive), name, GateConfig(), store.uri
    )
    assert result["passed"], result["failures"]
    (skipped,) = result["not_gated"]
    assert skipped["label"] == "Pneumothorax" and skipped["positives"] == 1
    assert any("Pneumothorax: not gated: n=1 positive(s)" in note for note in result["notes"])
    assert "test_auroc_Pneumothorax" not in [c["metric"] for c in result["checks"]]


def test_champion_comparison_is_a_paired_test_on_the_same_images(store: Store) -> None:
    y, champion, challenger = _test_split()
    name = _name()
    register(make_run(store, predictions=(y, champion)), name, GateConfig(min_macro_auroc=0.5), store.uri)
    promote(name, "1", store.uri)
    # Every label is 0.026-0.037 lower than the champion's point estimate (more than max_label_drop
    # 0.02), but the paired interval of each difference holds zero: noise, so the gate passes.
    noisy = register(make_run(store, predictions=(y, challenger)), name, GateConfig(min_macro_auroc=0.5), store.uri)
    assert noisy["passed"], noisy["failures"]
    paired = [c for c in noisy["checks"] if c["gate"] == "max_label_drop"]
    assert len(paired) == 3
    for c in paired:
        assert c["comparison"]["method"] == "paired bootstrap over patients" and c["comparison"]["n"] == 200
        assert c["comparison"]["diff"] < -0.02 and c["comparison"]["ci"][1] >= 0
    # A challenger that lost Pneumothorax altogether fails on it, with the interval in the message.
    rng = np.random.default_rng(1)
    broken = champion.copy()
    broken[:, 2] = rng.normal(0, 1, len(y))
    worse = register(make_run(store, predictions=(y, broken)), name, GateConfig(min_macro_auroc=0.5), store.uri)
    assert [f["metric"] for f in worse["failures"]] == ["test_auroc_Pneumothorax"]
    assert "95% CI [" in worse["failures"][0]["message"] and "is not noise" in worse["failures"][0]["message"]
    delong = register(
        make_run(store, predictions=(y, broken)), name, GateConfig(min_macro_auroc=0.5, comparison="delong"), store.uri
    )
    assert [f["metric"] for f in delong["failures"]] == ["test_auroc_Pneumothorax"]
    assert delong["failures"][0]["comparison"]["method"] == "DeLong"


def test_models_lists_versions_aliases_and_gate_verdicts(store: Store) -> None:
    from radflow.registry import list_models

    name = _name()
    register(make_run(store, GOOD), name, GateConfig(), store.uri)
    register(make_run(store, {label: 0.6 for label in LABELS}), name, GateConfig(), store.uri)
    register(make_run(store, GOOD), name, GateConfig(), store.uri)
    promote(name, "1", store.uri)
    (model,) = list_models(store.uri, name)["models"]
    assert model["aliases"] == {"challenger": "3", "champion": "1"}
    assert [(v["version"], v["aliases"], v["gate"]) for v in model["versions"]] == [
        ("3", ["challenger"], "passed"),
        ("2", [], "failed"),
        ("1", ["champion"], "passed"),
    ]
    assert "test_macro_auroc 0.6000 < min_macro_auroc" in model["versions"][1]["gate_failures"]
    assert model["versions"][2]["metrics"]["test_macro_auroc"] == pytest.approx(0.9)
    assert name in [m["name"] for m in list_models(store.uri)["models"]]
    runner = CliRunner()
    shown = runner.invoke(app, ["models", name, "--tracking-uri", store.uri])
    assert shown.exit_code == 0, shown.output
    assert "@champion" in shown.output and "failed" in shown.output
    as_json = runner.invoke(app, ["models", "--tracking-uri", store.uri, "--json"])
    assert as_json.exit_code == 0 and name in as_json.stdout
    unknown = runner.invoke(app, ["models", name + "x", "--tracking-uri", store.uri])
    assert unknown.exit_code == 2 and "Did you mean" in unknown.output


@pytest.fixture
def detection_family(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Tags of a detection run; the run's task kind names its family (``detection`` for tasks.detection)."""
    from radflow.registry import gates

    monkeypatch.setattr(gates, "gate_family", lambda metrics, tags: "detection")
    return {"radflow.task": "detection", gates.EVAL_HELD_OUT_TAG: "split-1"}


def test_detection_absolute_gates(detection_family: dict[str, str]) -> None:
    from radflow.registry.gates import check_gates

    metrics = {"test_map50": 0.25, "test_froc_cpm": 0.7, "test_macro_auroc": 0.99}
    outcome = check_gates(metrics, detection_family, GateConfig(min_froc=0.6))
    verdicts = {c["gate"]: c["passed"] for c in outcome["checks"]}
    assert verdicts == {"min_map50": False, "min_froc": True}  # the default min_map50 is 0.3; no AUROC gate
    assert "test_map50 0.2500 < min_map50 0.3" in outcome["failures"][0]["message"]
    unevaluated = check_gates({}, detection_family, GateConfig(min_froc=0.6))
    assert [c["metric"] for c in unevaluated["failures"]] == ["test_map50", "test_froc_cpm"]
    assert "evaluate it first" in unevaluated["failures"][1]["message"]
    off = check_gates(metrics, detection_family, GateConfig(min_map50=None))
    assert off["passed"] and not off["checks"] and "both off" in off["notes"][0]


def test_detection_map_drop_against_the_champion_on_point_estimates(detection_family: dict[str, str]) -> None:
    from radflow.registry.gates import check_gates

    champion = {"version": "2", "metrics": {"test_map50": 0.5}, "tags": detection_family}
    outcome = check_gates({"test_map50": 0.47}, detection_family, GateConfig(), champion, paired_note="no boxes logged")
    drop = next(c for c in outcome["checks"] if c["gate"] == "max_map_drop")
    assert not drop["passed"] and "0.0300 below champion v2" in drop["message"]
    assert any("point estimates" in note and "no boxes logged" in note for note in outcome["notes"])
    assert check_gates({"test_map50": 0.49}, detection_family, GateConfig(), champion)["passed"]


def test_detection_map_drop_is_a_paired_test_on_both_runs_boxes(detection_family: dict[str, str]) -> None:
    from radflow.registry.gates import PairedBoxes, check_gates

    def paired(n: int, missed: int) -> PairedBoxes:
        # One truth per image; the champion finds every one, the candidate misses the first ``missed``.
        truths = [np.array([[4.0 * i % 40, 0.0, 4.0 * i % 40 + 10.0, 10.0, 0.0]]) for i in range(n)]
        champion = [np.c_[t, [0.9]] for t in truths]
        candidate = [np.zeros((0, 6)) if i < missed else c for i, c in enumerate(champion)]
        groups = np.array([f"p{i}" for i in range(n)])
        return PairedBoxes(labels=["Nodule"], truths=truths, candidate=candidate, champion=champion, groups=groups)

    champion = {"version": "1", "metrics": {"test_map50": 1.0}, "tags": detection_family}
    metrics = {"test_map50": 0.5}

    def drop_check(boxes: PairedBoxes) -> dict[str, object]:
        outcome = check_gates(metrics, detection_family, GateConfig(min_map50=None), champion, boxes)
        return next(c for c in outcome["checks"] if c["gate"] == "max_map_drop")

    # Half the findings lost on 40 patients: a drop far beyond max_map_drop, and no resample without it.
    lost = drop_check(paired(40, 20))
    assert not lost["passed"] and "not noise" in lost["message"]
    assert lost["comparison"]["diff"] < -0.4 and lost["comparison"]["ci"][1] < 0
    # One finding of six lost: a 0.17 drop, but resamples without that patient show none, so it is not proven.
    unproven = drop_check(paired(6, 1))
    assert unproven["passed"] and unproven["comparison"]["diff"] < -0.1 and unproven["comparison"]["ci"][1] == 0


def test_the_dice_drop_gate_is_a_paired_test_on_the_same_images_when_both_runs_have_per_image_dice() -> None:
    from radflow.registry.gates import EVAL_HELD_OUT_TAG, PairedDice, check_gates
    from tests.metrics.test_paired_dice import CHAMPION, GROUPS, NOISY, STEADY

    tags = {"radflow.task": "segmentation", EVAL_HELD_OUT_TAG: "split-1"}
    champion = {"version": "2", "metrics": {"test_dice_Heart": 0.875}, "tags": {EVAL_HELD_OUT_TAG: "split-1"}}
    gates = GateConfig(min_mean_dice=0, max_dice_drop=0.02, comparison_bootstrap=2000)

    def verdict(candidate: np.ndarray) -> dict[str, object]:
        paired = PairedDice(["Heart"], candidate[:, None], CHAMPION[:, None], GROUPS)
        metrics = {"test_mean_dice": float(np.mean(candidate)), "test_dice_Heart": float(np.mean(candidate))}
        outcome = check_gates(metrics, tags, gates, champion, paired)
        return next(c for c in outcome["checks"] if c["gate"] == "max_dice_drop")

    noisy, steady = verdict(NOISY), verdict(STEADY)
    # both are 0.125 below the champion: the point-estimate gate fails both, the paired one only the real drop
    assert noisy["passed"] and noisy["comparison"]["ci"][0] < 0 < noisy["comparison"]["ci"][1]
    assert not steady["passed"] and "is not noise" in steady["message"]
    assert steady["comparison"]["ci"] == pytest.approx([-0.125, -0.125]) and "95% CI" in steady["message"]
    point = check_gates({"test_mean_dice": 0.75, "test_dice_Heart": 0.75}, tags, gates, champion)
    assert not next(c for c in point["checks"] if c["gate"] == "max_dice_drop")["passed"]


def test_two_segmentation_evaluations_align_on_their_shared_images_into_paired_dice(tmp_path: Path) -> None:
    """What registration downloads (both runs' predictions.parquet) becomes the paired Dice test's input."""
    import pandas as pd

    from radflow.registry.comparison import align_predictions
    from radflow.registry.gates import PairedDice

    def write(name: str, ids: list[str], heart: list[float], lesion: list[float]) -> Path:
        path = tmp_path / f"{name}.parquet"
        frame = pd.DataFrame({"image_id": ids, "patient_id": [f"p{i[-1]}" for i in ids],
                              "dice:Heart": heart, "dice:Lesion": lesion, "truth_empty:Heart": False})  # fmt: skip
        frame.to_parquet(path)
        return path

    nan = float("nan")
    mine = write("candidate", ["a1", "b2", "c3"], [0.9, 0.8, 0.7], [nan, 0.5, 0.0])
    theirs = write("champion", ["c3", "a1", "z9"], [0.6, 0.95, 0.1], [0.2, nan, 0.3])
    paired, why = align_predictions(mine, theirs)
    assert why is None and isinstance(paired, PairedDice)
    assert paired.structures == ["Heart", "Lesion"]
    np.testing.assert_array_equal(paired.candidate, [[0.9, nan], [0.7, 0.0]])  # a1 and c3, in the candidate's order
    np.testing.assert_array_equal(paired.champion, [[0.95, nan], [0.6, 0.2]])
    assert list(paired.groups) == ["p1", "p3"]
    scores = tmp_path / "scores.parquet"
    pd.DataFrame({"image_id": ["a1"], "patient_id": ["p1"], "target:Edema": [1.0], "score:Edema": [0.2]}).to_parquet(
        scores
    )
    nothing, why = align_predictions(mine, scores)
    assert nothing is None and "Dice per structure and the other scores" in str(why)
