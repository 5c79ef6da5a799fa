"""The Typer app and the helpers every command module shares."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from radflow.errors import RadflowError
from radflow.tracking import set_mlflow_verbosity

__all__ = [
    "app",
    "console",
    "emit",
    "is_verbose",
    "line_printer",
    "main",
    "progress_bar",
    "report_console",
    "run_command",
    "settings_epilog",
]

_VERBOSE_ENV = "RADFLOW_VERBOSE"
_verbose = False

_display_type_rich = typer.core.TyperOption.display_type_rich


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """An on/off flag takes no value: show nothing in the type column instead of Typer's ``<bool>``."""
    return None if self.is_flag else _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

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
        # Soft-wrapped: one line when piped or logged, so the message can be searched and pasted whole.
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print a result as JSON (stdout, machine-readable) or through ``render`` (human table)."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        render(result)


def report_console() -> Console:
    """The console for tables people keep: the terminal's width on a terminal, else no width limit.

    Piped or logged output has no width; Rich would assume 80 columns and cut labels and CIs (``Cardiome…``).
    """
    if console.is_terminal:
        return console
    return Console(stderr=True, width=_UNLIMITED_WIDTH, no_color=console.no_color)


_UNLIMITED_WIDTH = 10_000


def settings_epilog(*sections: str) -> str:
    """Help text listing the ``-S`` keys of ``sections`` (default: all), for a command's ``epilog``.

    One line per section; defaults and meanings are in ``radflow params [SECTION]``.
    """
    from radflow.config import describe_params

    rows = describe_params()
    groups: dict[str, list[str]] = {}
    for row in rows:
        section, _, rest = row["key"].partition(".")
        if not sections or section in sections:
            groups.setdefault(section, []).append(rest)
    listed = "\n\n".join(f"{section}: {', '.join(keys)}" for section, keys in groups.items())
    return f"Settings for -S KEY=VALUE (defaults and meanings: radflow params SECTION):\n\n{listed}"


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
