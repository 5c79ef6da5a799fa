"""``radflow sweep``: a grid over params.yaml keys run as Ray Tune trials, the best registered through the usual gates.

Design, in the order a sweep runs:

- The grid is ``{KEY: [values]}`` over dotted params.yaml keys (``--grid train.lr=1e-3,3e-3``); trials are the
  Cartesian product, each a copy of the base params with its values. Keys are checked (did-you-mean) before
  anything starts; values are checked by each trial, so a bad value fails that trial only.
- One parent MLflow run (``sweep-NAME``) holds the grid; each trial first creates its CHILD run
  (``mlflow.parentRunId``) and hands it to :func:`radflow.train.loop.train` through ``MLFLOW_RUN_ID``, so the
  child is the ordinary training run: params, per-epoch metrics, checkpoint and model. A trial that raises is
  marked FAILED (in MLflow and in Tune) and the sweep goes on.
- Early stopping of bad trials (on unless ``early_stop=False``): each trial reports its best monitored val metric
  so far to Tune after every epoch but its last (``train(on_epoch=...)``) and once more when it has finished
  (``final``), and Tune's ASHA scheduler (asynchronous successive halving) stops a trial whose value at a rung
  (``grace_epochs`` x ``reduction_factor``^k epochs) is below the best 1/``reduction_factor`` of those that reached
  the rung before it. ``max_t`` is the longest trial's ``train.epochs``, so a trial that reached its last epoch
  is never cut before its model is logged. Tune stops a trial by ``sys.exit`` inside its report: ``train()``
  ends the child run ``KILLED`` (not ``FAILED``), and the driver marks any child still ``RUNNING`` (an actor
  killed before it could) the same way, tagged ``radflow.sweep.stopped_at_epoch``; sweep.json says
  ``stopped``. Stopped trials keep their checkpoints but are not candidates for registration. Within a trial
  ``train.early_stopping_patience`` still stops a run that stops improving.
- The best finished trial by the task kind's monitored val metric is evaluated, exported and registered with the
  same library calls the pipeline's evaluate/export/register stages make (``evaluate_and_log``,
  ``export_model``, :func:`radflow.registry.register` with params.yaml's gates, ``log_gated_report``).
- ``sweep.json`` records every trial (params, status, metric, child run, error) and the chosen params, and
  ``dvc_command`` is the ``radflow run -S ...`` that makes the chosen params a DVC experiment.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from radflow.config import Params
from radflow.errors import ConfigError
from radflow.scale.cluster import connect

__all__ = ["SWEEP_TAG", "parse_grid", "run_sweep", "scheduler_spec", "trial_configs"]

SWEEP_TAG = "radflow.sweep"
"""Tag naming the sweep on its parent and on every child run."""


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["train.lr=1e-3,3e-3"]`` -> ``{"train.lr": [0.001, 0.003]}`` (values parsed as YAML scalars)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid expects KEY=V1,V2,... (e.g. train.lr=1e-3,3e-3), got {item!r}.")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice; give all its values in one --grid.")
        grid[key] = [_scalar(v.strip()) for v in values.split(",")]
    if not grid:
        raise ConfigError("radflow sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def _scalar(text: str) -> Any:
    """A YAML scalar, and a number for what YAML 1.1 leaves a string (``1e-3`` has no dot)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return value


def trial_configs(params: Params, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The grid's trials (Cartesian product, grid order), each checked against the params schema.

    An unknown key or a value of the wrong type is refused here, before any trial starts; what only
    training can judge (an architecture that does not exist) fails that trial alone.
    """
    keys = list(grid)
    configs = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    for config in configs:
        try:
            params.with_overrides(config)
        except ConfigError as exc:
            raise ConfigError(f"--grid {config}: {exc}") from None
    return configs


def _trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """One Tune trial: its child MLflow run, :func:`train` on its overrides, reports per epoch and at the end."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from radflow.tracking import env_scope
    from radflow.train.loop import train

    number = int(config.pop("__trial"))
    overrides = {**config, "train.threads": spec["cpus_per_trial"]}
    tracking = MlflowClient(spec["tracking_uri"])
    name = f"{spec['name']}-t{number}"
    child = tracking.create_run(
        spec["experiment_id"],
        run_name=name,
        tags={"mlflow.parentRunId": spec["parent_run_id"], SWEEP_TAG: spec["name"], "radflow.sweep.trial": str(number)},
    ).info.run_id
    monitor, mode = spec["monitor"], spec["mode"]
    best: list[float] = []  # the best monitored value so far: what ASHA compares at its rungs

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(monitor, math.nan)
        if math.isfinite(value) and (not best or (value > best[0] if mode == "max" else value < best[0])):
            best[:] = [value]
        if epoch < params.train.epochs:  # the last epoch's report is the final one, after the model is logged
            # Tune stops a trial here, by sys.exit: train() then ends the child run KILLED.
            tune.report({"value": best[0] if best else math.nan, "epoch": epoch})

    try:
        params = Params.model_validate(spec["params"]).with_overrides(overrides)
        with env_scope(MLFLOW_RUN_ID=child):
            result = train(
                Path(spec["dataset"]),
                params,
                spec["tracking_uri"],
                spec["experiment"],
                out_dir=Path(spec["out_dir"]) / f"trial-{number}" / "checkpoints",
                progress=False,
                on_epoch=report_epoch if spec["early_stop"] else None,
            )
    except SystemExit:
        raise  # stopped by the scheduler: not an error of the trial (the driver records it)
    except BaseException as exc:
        tracking.set_tag(child, "radflow.error", f"{type(exc).__name__}: {exc}"[:4000])
        if tracking.get_run(child).info.status == "RUNNING":  # train() ends the runs it opened itself
            tracking.set_terminated(child, "FAILED")
        raise
    tune.report(
        {
            "value": result.best_metric if result.best_metric is not None else math.nan,
            "epoch": result.epochs_run,
            "final": True,
            "monitor": result.monitor,
            "run_id": result.run_id,
            "checkpoint": str(result.checkpoint_path),
        }
    )


def run_sweep(
    dataset: Path,
    params: Params,
    grid: dict[str, list[Any]],
    out_dir: Path,
    *,
    tracking_uri: str | None = None,
    experiment: str = "radflow",
    address: str = "auto",
    cpus_per_trial: int = 1,
    name: str | None = None,
    register_best: bool = True,
    early_stop: bool = True,
    grace_epochs: int = 1,
    reduction_factor: float = 2.0,
    max_concurrent: int | None = None,
) -> dict[str, Any]:
    """Run ``grid`` on the Ray cluster at ``address``; write and return ``sweep.json``'s content.

    ``out_dir`` receives each trial's checkpoints (``trial-N/checkpoints``), Tune's own files (``tune/``) and
    ``sweep.json``. ``early_stop`` runs ASHA with ``grace_epochs`` and ``reduction_factor`` (see the module
    docstring); ``max_concurrent`` caps trials running at once (default: as many as the cluster's CPUs hold).
    Returns ``{"name", "parent_run_id", "grid", "monitor", "mode", "scheduler", "trials", "best",
    "chosen_params", "registration", "dvc_command", "seconds"}``.
    """
    from mlflow.tracking import MlflowClient

    from radflow.data.dataset import Dataset
    from radflow.tasks import get_task
    from radflow.tracking import check_tracking, ensure_experiment, resolve_tracking_uri

    if cpus_per_trial < 1:
        raise ConfigError(f"--cpus-per-trial must be at least 1, got {cpus_per_trial}.")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be at least 1, got {max_concurrent}.")
    configs = trial_configs(params, grid)
    scheduler = scheduler_spec(params, configs, early_stop, grace_epochs, reduction_factor)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    ds = Dataset.open(dataset)
    monitor, mode = get_task(ds.task).monitor
    connect(address)  # an unreachable cluster fails here, before any run is made
    from ray import tune

    started = time.perf_counter()
    name = name or time.strftime("sweep-%Y%m%d-%H%M%S")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment_id = ensure_experiment(uri, experiment)
    tracking = MlflowClient(uri)
    parent = tracking.create_run(experiment_id, run_name=name, tags={SWEEP_TAG: name, "radflow.sweep.role": "parent"})
    parent_id = parent.info.run_id
    tracking.log_param(parent_id, "grid", json.dumps(grid))
    tracking.log_param(parent_id, "trials", str(len(configs)))
    spec = {
        "name": name,
        "dataset": str(Path(dataset).resolve()),
        "params": params.model_dump(mode="json"),
        "tracking_uri": uri,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "parent_run_id": parent_id,
        "out_dir": str(out_dir),
        "cpus_per_trial": cpus_per_trial,
        "monitor": monitor,
        "mode": mode,
        "early_stop": scheduler is not None,
    }
    space = {"__trial": tune.grid_search(list(range(len(configs))))}
    trainable = tune.with_resources(
        tune.with_parameters(_grid_trial, spec=spec, configs=configs), {"cpu": cpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            scheduler=_asha(scheduler, mode) if scheduler is not None else None,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out_dir),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        # Tune prints its trial table and errors on stdout whatever `verbose` says; stdout is radflow's (--json).
        with contextlib.redirect_stdout(sys.stderr):
            grid_result = tuner.fit()
        trials = _trials(grid_result, configs, tracking, parent_id)
        finished = [t for t in trials if t["status"] == "finished" and t["value"] is not None]
        best = (max if mode == "max" else min)(finished, key=lambda t: t["value"]) if finished else None
        if best is not None:
            tracking.set_tag(parent_id, "radflow.sweep.best_run", best["run_id"])
            tracking.log_metric(parent_id, f"best_{monitor}", best["value"])
        registration = _register(best, params, dataset, out_dir, uri) if best is not None and register_best else None
    except BaseException:
        tracking.set_terminated(parent_id, "FAILED")
        raise
    tracking.set_terminated(parent_id, "FINISHED")
    chosen = dict(best["params"]) if best is not None else None
    record = {
        "name": name,
        "parent_run_id": parent_id,
        "tracking_uri": uri,
        "grid": grid,
        "monitor": monitor,
        "mode": mode,
        "scheduler": scheduler,
        "trials": trials,
        "best": best and {k: best[k] for k in ("trial", "run_id", "value")},
        "chosen_params": chosen,
        "registration": registration,
        "dvc_command": " ".join(["radflow run", *(f"-S {k}={_yaml_scalar(v)}" for k, v in (chosen or {}).items())]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "sweep.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def scheduler_spec(
    params: Params, configs: list[dict[str, Any]], early_stop: bool, grace_epochs: int, reduction_factor: float
) -> dict[str, Any] | None:
    """ASHA's settings for these trials as sweep.json records them; ``None`` without early stopping.

    Checked before any trial (and by the CLI before it joins the cluster).
    """
    if not early_stop:
        return None
    if grace_epochs < 1:
        raise ConfigError(f"--grace-epochs must be at least 1, got {grace_epochs}.")
    if reduction_factor <= 1:
        raise ConfigError(f"--reduction-factor must be above 1, got {reduction_factor}.")
    trial_params = [params.with_overrides(c) for c in configs]
    parallel = sorted({p.train.workers for p in trial_params if p.train.workers > 1})
    if parallel:
        raise ConfigError(
            f"early stopping reports every epoch from the trial's own process; train.workers={parallel[0]} trains in "
            "several. Use --no-early-stop for data-parallel trials."
        )
    max_t = max(p.train.epochs for p in trial_params)
    return {
        "name": "asha",
        "grace_epochs": min(grace_epochs, max_t),
        "reduction_factor": reduction_factor,
        "max_epochs": max_t,
    }


def _asha(spec: dict[str, Any], mode: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",  # one report per epoch
        metric="value",
        mode=mode,
        max_t=spec["max_epochs"],
        grace_period=spec["grace_epochs"],
        reduction_factor=spec["reduction_factor"],
    )


def _grid_trial(config: dict[str, Any], spec: dict[str, Any], configs: list[dict[str, Any]]) -> None:
    _trial({**configs[int(config["__trial"])], "__trial": config["__trial"]}, spec)


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n").removesuffix("\n...").strip()


def _trials(grid_result: Any, configs: list[dict[str, Any]], tracking: Any, parent_id: str) -> list[dict[str, Any]]:
    """One row per trial in grid order, from Tune's results and the child runs (MLflow holds the run ids)."""
    children = {
        int(run.data.tags.get("radflow.sweep.trial", -1)): run
        for run in tracking.search_runs(
            [tracking.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
        )
    }
    rows = []
    for result in grid_result:
        number = int(result.config["__trial"])
        child = children.get(number)
        error = result.error
        metrics = result.metrics or {}
        status = "failed" if error is not None else "finished" if metrics.get("final") else "stopped"
        epochs = metrics.get("epoch")
        if status == "stopped" and child is not None:
            # Tune stopped it after an epoch's report; train() ended the run KILLED unless the actor went first.
            if child.info.status == "RUNNING":
                tracking.set_terminated(child.info.run_id, "KILLED")
            tracking.set_tag(child.info.run_id, "radflow.sweep.stopped_at_epoch", str(epochs))
            child = tracking.get_run(child.info.run_id)
        rows.append(
            {
                "trial": number,
                "params": configs[number],
                "status": status,
                "value": _finite(metrics.get("value")) if error is None else None,
                "epochs": int(epochs) if epochs is not None else None,
                "run_id": child.info.run_id if child is not None else None,
                "run_status": child.info.status if child is not None else None,
                "checkpoint": metrics.get("checkpoint"),
                "error": _error_line(error, child),
            }
        )
    return sorted(rows, key=lambda r: r["trial"])


def _finite(value: Any) -> float | None:
    """The trial's metric, ``None`` when it has none (sweep.json stays plain JSON: no NaN)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _error_line(error: BaseException | None, child: Any) -> str | None:
    if error is None:
        return None
    if child is not None and "radflow.error" in child.data.tags:
        return str(child.data.tags["radflow.error"]).splitlines()[0]
    return str(error).strip().splitlines()[-1][:500]


def _register(best: dict[str, Any], params: Params, dataset: Path, out_dir: Path, uri: str) -> dict[str, Any]:
    """The best trial through the pipeline's evaluate -> export -> register calls; the registration summary."""
    from radflow.data.dataset import Dataset
    from radflow.data.split import held_out_version
    from radflow.evaluate.report import evaluate_and_log, log_gated_report
    from radflow.export.pipeline import export_model
    from radflow.registry import EVAL_HELD_OUT_TAG, register, registration_summary
    from radflow.tracking import client, tracking_uri_scope

    chosen = params.with_overrides(best["params"])
    run_id = best["run_id"]
    folder = out_dir / "best"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model = folder / "model.pt"
    # Evaluation writes thresholds into the checkpoint it scores: a copy keeps the trial's own.
    shutil.copyfile(best["checkpoint"], model)
    # The fluent API too (export logs the ONNX model with it): an earlier in-process run may have left it elsewhere.
    with tracking_uri_scope(uri):
        evaluate_and_log(run_id, model, dataset, chosen.evaluate, uri, gates=chosen.gates, model_card=chosen.model_card)
        client(uri).set_tag(run_id, EVAL_HELD_OUT_TAG, held_out_version(Dataset.open(dataset)))
        cfg = chosen.export
        export_model(
            f"runs:/{run_id}",
            folder / "model.onnx",
            dataset=dataset,
            int8=cfg.int8,
            opset=cfg.opset,
            dice_tolerance=cfg.max_int8_dice_drop,
            map_tolerance=cfg.max_int8_map_drop,
            name=chosen.registry.name,
        )
        result = register(run_id, chosen.registry.name, chosen.gates, uri)
        log_gated_report(run_id, result, uri, gates=chosen.gates)
    return registration_summary(result, run_id)
