"""The Typer app and the helpers every command module shares."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from radflow.errors import RadflowError

__all__ = ["app", "console", "emit", "main", "progress_bar", "run_command"]

# Telemetry off before MLflow or DVC is ever imported by a command.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

app = typer.Typer(
    name="radflow",
    help="MLOps for medical imaging: data, training, registry, serving and monitoring for radiograph models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"radflow {version('radflow')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """MLOps for medical imaging: data, training, registry, serving and monitoring for radiograph models."""


T = TypeVar("T")


def run_command(fn: Callable[[], T]) -> T:
    """Run a command body; a user-fixable error prints one clear line and exits with code 2."""
    try:
        return fn()
    except RadflowError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print a result as JSON (stdout, machine-readable) or through ``render`` (human table)."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        render(result)


def progress_bar(name: str, quiet: bool = False) -> Progress:
    """A progress bar on stderr (count, bar, time left); ``quiet`` hides it, e.g. under --json."""
    return Progress(
        TextColumn(name),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet,
    )


def main() -> None:
    app()
