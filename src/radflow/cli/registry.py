"""``radflow register`` / ``promote`` / ``rollback``: the gated model registry with champion and challenger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, report_console, run_command, settings_epilog

__all__ = ["promote_command", "register_command", "rollback_command"]

_TRACKING = typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).")


def _render_register(result: dict[str, Any]) -> None:
    table = Table("gate", "metric", "value", "limit", "result", title=f"{result['name']} version {result['version']}")
    for check in result["checks"]:
        value = "-" if check["value"] is None else f"{check['value']:.4f}"
        verdict = "[green]pass[/]" if check["passed"] else "[bold red]FAIL[/]"
        table.add_row(check["gate"], check["metric"], value, f"{check['limit']:.4f}", verdict)
    report_console().print(table)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result["passed"]:
        console.print(f"[green]gates passed[/]: version {result['version']} is now @challenger", highlight=False)
    else:
        for failure in result["failures"]:
            console.print(f"[bold red]gate failed:[/] {failure['message']}", highlight=False)
        console.print(f"version {result['version']} stays registered without an alias (tag gate=failed)")


@app.command("register", epilog=settings_epilog("gates"))
def register_command(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a `radflow train` run.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="params.yaml with the gates: section (default: ./params.yaml)."),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-S",
            metavar="KEY=VALUE",
            help="Change a gate: -S gates.min_macro_auroc=0.7 (keys: `radflow params gates`).",
        ),
    ] = None,
    tracking_uri: Annotated[str | None, _TRACKING] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Register a run's model; quality gates decide whether it becomes @challenger (exit 1 when a gate fails)."""
    from radflow.config import load_params
    from radflow.errors import ConfigError
    from radflow.pipeline.run import parse_sets
    from radflow.registry import register

    def body() -> dict[str, Any]:
        overrides = parse_sets(sets or [])
        others = [key for key in overrides if not key.startswith("gates.")]
        if others:
            raise ConfigError(
                f"register reads only the gates: section; -S {others[0]} has no effect here (use -S gates.KEY=VALUE)."
            )
        path = config if config is not None else (Path("params.yaml") if Path("params.yaml").is_file() else None)
        from radflow.evaluate.report import log_gated_report

        gates = load_params(path).with_overrides(overrides).gates
        result = register(run_id, name, gates, tracking_uri)
        log_gated_report(run_id, result, tracking_uri, gates)  # the report's gates section gets the verdicts
        return result

    result = run_command(body)
    emit(result, as_json, _render_register)
    if not result["passed"]:
        raise typer.Exit(1)


@app.command("promote")
def promote_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to make the champion.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even a version that failed its gates.")] = False,
    tracking_uri: Annotated[str | None, _TRACKING] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Move the champion alias to VERSION; the previous champion is remembered for rollback."""
    from radflow.registry import promote

    def render(result: dict[str, Any]) -> None:
        if not result["changed"]:
            console.print(f"{name} version {result['version']} already is the champion")
        else:
            before = f" (was version {result['previous']})" if result["previous"] else ""
            console.print(f"{name} @champion -> version {result['version']}{before}")

    emit(run_command(lambda: promote(name, version, tracking_uri, force=force)), as_json, render)


@app.command("rollback")
def rollback_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    tracking_uri: Annotated[str | None, _TRACKING] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Give the champion alias back to the version the last promote replaced."""
    from radflow.registry import rollback

    def render(result: dict[str, Any]) -> None:
        console.print(f"{name} @champion -> version {result['version']} (was version {result['replaced']})")

    emit(run_command(lambda: rollback(name, tracking_uri)), as_json, render)
