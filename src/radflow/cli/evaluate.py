"""``radflow evaluate``: the clinician-grade evaluation report of a model on a dataset split."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from radflow.cli._app import app, console, emit, report_console, run_command
from radflow.errors import ConfigError, NotFoundError

__all__ = ["evaluate_command"]


def _default_out(model: str, split: str) -> Path:
    # One folder per model and split, so evaluating a second model does not overwrite the first.
    name = re.sub(r"[^0-9A-Za-z_.@-]+", "_", Path(model).stem if Path(model).suffix == ".pt" else model).strip("_")
    return Path("evaluation") / f"{name or 'model'}-{split}"


def _config_path(config: Path | None) -> Path | None:
    if config is not None:
        return config
    return Path("params.yaml") if Path("params.yaml").is_file() else None


@app.command("evaluate")
def evaluate_command(
    model: Annotated[
        str, typer.Argument(help="Checkpoint path, MLflow run id, runs:/RUN_ID, models:/NAME@ALIAS or models:/NAME/N.")
    ],
    dataset: Annotated[
        Path | None,
        typer.Option("--dataset", "-d", help="Dataset directory (default: the one the model was trained on)."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate: test, val, train or all.")] = "test",
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for evaluation.json and PNGs (default: ./evaluation/MODEL-SPLIT)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="params.yaml for the evaluate: section (default: ./params.yaml)."),
    ] = None,
    n_bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples for the CIs (0 = none).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    log: Annotated[
        bool, typer.Option("--log", help="Log the evaluation to the model's MLflow run (test split only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the evaluation JSON.")] = False,
) -> None:
    """Per-label AUROC with CIs, AUPRC, sensitivity/specificity at val-chosen thresholds, calibration, subgroups."""
    from radflow.config import load_params
    from radflow.evaluate.report import evaluate_and_log, evaluate_checkpoint
    from radflow.registry import resolve_model_run
    from radflow.train.checkpoint import load_checkpoint

    def body() -> dict[str, Any]:
        everything = load_params(_config_path(config)).with_overrides({"evaluate.n_bootstrap": n_bootstrap})
        params, gates, card = everything.evaluate, everything.gates, everything.model_card
        checkpoint, run_id = resolve_model_run(model, tracking_uri)
        data = dataset
        if data is None:
            stored = load_checkpoint(checkpoint)["meta"].get("dataset_path") or ""
            if not stored or not Path(stored).is_dir():
                raise NotFoundError(
                    f"the model's training dataset {stored or '(not recorded)'} is not here; pass --dataset DIR."
                )
            data = Path(stored)
        if log:
            if run_id is None:
                raise ConfigError("--log needs a model from MLflow (run id, runs:/ or models:/), not a local file.")
            if split != "test":
                raise ConfigError(f"--log records test metrics; drop --split {split} or --log.")
            return evaluate_and_log(run_id, checkpoint, data, params, tracking_uri, gates=gates, model_card=card)
        out_dir = out or _default_out(model, split)
        return evaluate_checkpoint(
            checkpoint, data, split, params, out_dir, device=device, gates=gates, model_card=card
        )

    result = run_command(body)
    emit(result, as_json, _render)
    if not as_json and not log:
        console.print(f"saved to {out or _default_out(model, split)}", highlight=False)


def _render(result: dict[str, Any]) -> None:
    from radflow.evaluate.report import render_evaluation

    # Full width when piped or logged: the table is what people paste into tickets and reports.
    render_evaluation(result, report_console())
