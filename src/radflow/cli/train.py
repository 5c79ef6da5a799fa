"""``radflow train`` (train and track a model) and ``radflow ui`` (the MLflow UI on the workspace store)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, run_command, settings_epilog

__all__ = ["train_command", "ui_command"]


def _render(result: dict[str, Any]) -> None:
    monitor = result["monitor"]
    table = Table("epoch", "train loss", "val loss", monitor, "lr", title="training")
    for row in result["history"]:
        table.add_row(
            str(row["epoch"]),
            f"{row['train_loss']:.4f}",
            f"{row['val_loss']:.4f}",
            f"{row.get(monitor, float('nan')):.4f}",
            f"{row['lr']:.2g}",
        )
    console.print(table)
    resumed = result.get("resumed_from_epoch")
    if resumed is not None:
        ran = sum(1 for row in result["history"] if row["epoch"] > resumed)
        console.print(f"resumed from epoch {resumed}: {ran} more epoch(s) run in the same MLflow run", highlight=False)
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    best = result["best_metric"]
    console.print(f"best {monitor}: {best:.4f}" if best is not None else "best: -")
    console.print(f"run {result['run_id']} · {result['tracking_uri']}", highlight=False)
    console.print(f"checkpoint {result['checkpoint_path']} · model {result['model_uri']}", highlight=False)


_CHECKPOINTS = Path("checkpoints")


def _checkpoint_folder(out_dir: Path | None, arch: str, *, resume: bool, overwrite: bool) -> Path:
    """Where this run's checkpoints go: ``out_dir`` if free (or resumed, or ``overwrite``), else a new run folder."""
    from radflow.errors import NotFoundError
    from radflow.train.checkpoint import check_out_dir, latest_run_dir, new_run_dir

    if out_dir is not None:
        check_out_dir(out_dir, resume=resume, overwrite=overwrite)
        return out_dir
    if resume:
        latest = latest_run_dir(_CHECKPOINTS)
        if latest is None:
            raise NotFoundError(f"nothing to resume: no run in {_CHECKPOINTS}/ has a last.pt; pass --out-dir.")
        return latest
    return new_run_dir(_CHECKPOINTS, arch)


@app.command("train", epilog=settings_epilog("train", "evaluate"))
def train_command(
    dataset: Annotated[Path, typer.Argument(help="Split dataset directory (from `radflow ingest` + `radflow split`).")],
    arch: Annotated[str | None, typer.Option(help="Architecture (small_cnn, densenet121, resnet18, ...).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Data-parallel training processes (torch DDP; train.workers): --batch-size is the global batch, "
            "split evenly across them.",
        ),
    ] = None,
    loader_workers: Annotated[
        int | None, typer.Option(min=0, help="DataLoader worker processes per training process (train.num_workers).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local state-dict file to start from.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="params.yaml (default: ./params.yaml when present).")
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-S",
            metavar="KEY=VALUE",
            help="Override any setting: -S train.lr=3e-4 (repeatable; keys: `radflow params`).",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "radflow",
    out_dir: Annotated[
        Path | None,
        typer.Option(help="Checkpoint folder (default: a new ./checkpoints/ARCH-TIMESTAMP for each run)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from last.pt in --out-dir (default: the newest run in ./checkpoints)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Let this run replace the checkpoints already in --out-dir.")
    ] = False,
    no_evaluate: Annotated[
        bool, typer.Option("--no-evaluate", help="Skip the test-split evaluation at the end.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a model on a split dataset; log params, metrics, checkpoint, model and evaluation to MLflow."""
    from radflow.config import load_params
    from radflow.data.dataset import Dataset
    from radflow.evaluate.report import evaluate_training
    from radflow.pipeline.run import parse_sets
    from radflow.tasks import get_task
    from radflow.train.loop import fit_arch, train

    def body() -> dict[str, Any]:
        path = config if config is not None else (Path("params.yaml") if Path("params.yaml").is_file() else None)
        overrides: dict[str, Any] = {
            "train.arch": arch,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.device": device,
            "train.workers": workers,
            "train.num_workers": loader_workers,
            "train.seed": seed,
            "train.weights": str(weights) if weights is not None else None,
            **parse_sets(sets or []),
        }
        params = load_params(path).with_overrides(overrides)
        network = params.train.arch
        if out_dir is None and not resume:
            # a new run folder is named after the network the run really trains (a segmentation
            # dataset trains its kind's default)
            network = fit_arch(network, get_task(Dataset.open(dataset).task))
        folder = _checkpoint_folder(out_dir, network, resume=resume, overwrite=overwrite)
        result = train(
            dataset,
            params,
            tracking_uri=tracking_uri,
            experiment=experiment,
            resume=resume,
            out_dir=folder,
            progress=not as_json,
        )
        if not no_evaluate:
            evaluate_training(result, dataset, params.evaluate, gates=params.gates, model_card=params.model_card)
        return result.to_dict()

    emit(run_command(body), as_json, _render)


@app.command("ui")
def ui_command(
    workspace: Annotated[Path, typer.Option(help="Workspace holding mlflow.db.")] = Path("."),
    tracking_uri: Annotated[
        str | None, typer.Option(help="Backend store URI (default: MLFLOW_TRACKING_URI, else WORKSPACE/mlflow.db).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command instead of running it.")] = False,
) -> None:
    """Start the MLflow UI on the workspace's tracking store (Ctrl-C stops it)."""
    from radflow.tracking import resolve_tracking_uri, server_command

    def body() -> list[str]:
        return server_command(resolve_tracking_uri(tracking_uri, workspace), host=host, port=port)

    command = run_command(body)
    if dry_run:
        typer.echo(" ".join(command))
        return
    console.print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    try:
        code = subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
