"""The Typer app and the helpers every command module shares."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from radflow.errors import RadflowError
from radflow.tracking import set_mlflow_verbosity

__all__ = ["app", "console", "emit", "is_verbose", "line_printer", "main", "progress_bar", "run_command"]

_VERBOSE_ENV = "RADFLOW_VERBOSE"
_verbose = False

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
    verbose: bool = typer.Option(
        False, "--verbose", "-v", envvar=_VERBOSE_ENV, help="Also show MLflow's and DVC's own logs and progress bars."
    ),
) -> None:
    """MLOps for medical imaging: data, training, registry, serving and monitoring for radiograph models."""
    global _verbose
    _verbose = verbose
    # In the environment, so the `radflow stage` processes DVC starts are as quiet (or verbose) as this one.
    os.environ[_VERBOSE_ENV] = "1" if verbose else "0"
    set_mlflow_verbosity(verbose)


def is_verbose() -> bool:
    """Whether this command was started with ``-v`` (or runs as a stage of one that was)."""
    return _verbose


def line_printer(as_json: bool) -> Callable[[str], None]:
    """Prints the pipeline's (DVC's) output line by line: nothing under --json, DVC's own notices only with -v."""
    from radflow.pipeline.run import is_dvc_notice

    def show(line: str) -> None:
        if not as_json and (_verbose or not is_dvc_notice(line)):
            console.print(line, highlight=False, markup=False)

    return show


T = TypeVar("T")


def run_command(fn: Callable[[], T]) -> T:
    """Run a command body; a user-fixable error prints one clear line and exits with code 2."""
    try:
        return fn()
    except RadflowError as exc:
        # Escaped: messages quote user input and URI forms such as runs:/ID[/ARTIFACT], not markup.
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
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
