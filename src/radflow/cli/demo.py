"""``radflow demo``: what ``make demo`` runs — the main job on embedded defaults, through a workspace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, line_printer, run_command

if TYPE_CHECKING:
    from radflow.demo import DemoResult

__all__ = ["demo_command"]


def _render(result: DemoResult) -> None:
    from radflow.cli.workspace import render_results
    from radflow.demo import next_steps
    from radflow.evaluate.report import render_evaluation

    render_results(result.run)
    if result.evaluation:
        render_evaluation(result.evaluation, console)
    if result.promotion:
        console.print(
            f"promoted to models:/{result.promotion['name']}@champion (version {result.promotion['version']})"
        )
    elif result.registration:
        console.print("[yellow]not promoted:[/] the model failed its quality gates (see above)")
    timing = Table("step", "seconds", title="timing")
    for step in result.steps:
        timing.add_row(step["step"], f"{step['seconds']:.1f}")
    timing.add_row("[bold]total[/]", f"{sum(s['seconds'] for s in result.steps):.1f}")
    console.print(timing)
    console.print("\n".join(next_steps(result)), highlight=False)


@app.command("demo")
def demo_command(
    workdir: Annotated[Path, typer.Option("--dir", help="Workspace directory for the demo.")] = Path("demo-workspace"),
    task: Annotated[
        str | None, typer.Option("--task", help="segmentation: lungs, heart and findings from the phantom's masks.")
    ] = None,
    n: Annotated[int | None, typer.Option(help="Phantom chest images to generate [2000; segmentation 400].")] = None,
    size: Annotated[int | None, typer.Option(help="Training image size in pixels [128; segmentation 64].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data generation, splitting and training.")] = 0,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs, early stopping may end sooner [12; segmentation 10].")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", "-S", help="Any other param for the workspace: -S train.lr=3e-4.")
    ] = None,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Stop after the pipeline; do not serve.")] = False,
    no_simulate: Annotated[
        bool, typer.Option("--no-simulate", help="Serve without the simulated clinic's traffic and feedback.")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="Interface the demo server listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the demo server (a free one if taken).")] = 8000,
    rate: Annotated[float, typer.Option("--rate", help="Simulated clinic: images per second.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the main job in a workspace: phantom X-rays -> dataset -> trained, evaluated, registered champion.

    Then serve the champion with the web UI until Ctrl-C, with a simulated clinic sending traffic
    and feedback (--no-simulate: none; --no-serve: stop after the pipeline).
    """
    from radflow.demo import SEGMENTATION_DEFAULTS, DemoConfig, DemoServing, run_demo, serve_demo

    defaults = SEGMENTATION_DEFAULTS if task == "segmentation" else {}
    base = DemoConfig()
    config = DemoConfig(
        workdir=workdir,
        n=n if n is not None else defaults.get("n", base.n),
        size=size if size is not None else defaults.get("size", base.size),
        epochs=epochs if epochs is not None else defaults.get("epochs", base.epochs),
        seed=seed,
        sets=tuple(sets or []),
        task=task,
    )

    show = line_printer(as_json)

    def body() -> DemoResult:
        return run_demo(config, on_step=lambda name: console.print(f"[bold cyan]==>[/] {name}"), on_line=show)

    result = run_command(body)
    payload: dict[str, Any] = result.to_dict()
    emit(payload if as_json else result, as_json, _render)
    if no_serve or not result.promotion:
        if not no_serve:
            console.print("[yellow]nothing to serve:[/] no model was promoted to champion.")
        return

    # No clinic of new phantom patients exists for masks, and readers' mask feedback is not simulated.
    segmentation = task == "segmentation"

    def ready(serving: DemoServing) -> None:
        url = serving.url
        lines = [
            f"[bold green]serving[/] models:/{result.promotion['name']}@champion at {url}",
            f"  reader UI  {url}/",
            f"  dashboard  {url}/dashboard",
            f"  API        {url}/docs   (Open Inference Protocol under {url}/v2)",
        ]
        if serving.token_generated:
            lines.append(f"  admin token for the dashboard's controls: {serving.admin_token}")
        if not no_simulate and segmentation:
            lines.append(f"  a simulated clinic sends the train split, {rate:g} images/s (--no-simulate: off)")
        elif not no_simulate:
            lines.append(f"  a simulated clinic sends {rate:g} images/s with reader feedback (--no-simulate: off)")
        lines.append("Ctrl-C stops the server.")
        console.print("\n".join(lines), highlight=False)

    serving = run_command(
        lambda: serve_demo(
            result.workdir,
            host=host,
            port=port,
            simulate=not no_simulate,
            rate=rate,
            on_ready=ready,
            split="train" if segmentation else None,
            feedback_rate=0.0 if segmentation else 0.3,
        )
    )
    if serving.simulation:
        sim = serving.simulation
        console.print(f"simulated clinic: {json.dumps(sim, default=str)}", highlight=False, markup=False)
