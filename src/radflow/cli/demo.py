"""``radflow demo``: what ``make demo`` runs — the main job on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, run_command
from radflow.demo import MODEL_NAME, DemoConfig, DemoResult, run_demo
from radflow.evaluate.report import render_evaluation

__all__ = ["demo_command"]


def _render(result: DemoResult) -> None:
    info = result.dataset
    counts = result.split["counts"]
    table = Table("split", "images", "patients", title=f"dataset {result.split['version']} ({info['task']})")
    for split in ("train", "val", "test"):
        table.add_row(split, str(counts[split]["images"]), str(counts[split]["patients"]))
    console.print(table)
    positives = Table("label", "train", "val", "test", title="positive images per split")
    for label, per_split in result.split["positives"].items():
        positives.add_row(label, *(str(per_split[s]) for s in ("train", "val", "test")))
    console.print(positives)
    if result.evaluation:
        render_evaluation(result.evaluation, console)
    reg = result.registration
    if reg:
        verdict = "[green]passed[/]" if reg["passed"] else "[red]failed[/]"
        console.print(f"registered {reg['name']} version {reg['version']}: gates {verdict}")
        for failure in reg.get("failures", []):
            console.print(f"[red]  {failure}[/]")
        if reg["passed"]:
            console.print(f"promoted to models:/{MODEL_NAME}@champion")
    if result.export:
        console.print(f"exported ONNX: {result.export.get('onnx') or result.export}")
    timing = Table("step", "seconds", title="timing")
    for step in result.steps:
        timing.add_row(step["step"], f"{step['seconds']:.1f}")
    timing.add_row("[bold]total[/]", f"{sum(s['seconds'] for s in result.steps):.1f}")
    console.print(timing)
    console.print(
        f"workspace: {result.workdir}\n"
        f"browse runs: radflow ui --workspace {result.workdir}\n"
        f"predict:     radflow predict models:/{MODEL_NAME}@champion IMAGE "
        f"--tracking-uri sqlite:///{result.workdir}/mlflow.db"
    )


@app.command("demo")
def demo_command(
    workdir: Annotated[Path, typer.Option("--dir", help="Workspace directory for the demo.")] = Path("demo-workspace"),
    n: Annotated[int, typer.Option(help="Phantom chest images to generate.")] = 2000,
    size: Annotated[int, typer.Option(help="Training image size in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for data generation, splitting and training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs (early stopping may end sooner).")] = 12,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the main job: phantom X-rays -> dataset -> trained, evaluated, registered, exported model."""
    config = DemoConfig(workdir=workdir, n=n, size=size, seed=seed, epochs=epochs)

    def body() -> DemoResult:
        return run_demo(config, on_step=lambda name: console.print(f"[bold cyan]==>[/] {name}"))

    result = run_command(body)
    payload: dict[str, Any] = result.to_dict()
    emit(payload if as_json else result, as_json, _render)
