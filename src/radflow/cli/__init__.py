"""The ``radflow`` command line: one Typer app, commands grouped by noun in sibling modules.

Commands are thin: they parse, call a library function, and print a table or ``--json``.
Errors a user can fix (:class:`radflow.errors.RadflowError`) print one line, exit code 2.
"""

from __future__ import annotations

from radflow.cli._app import app, main
from radflow.cli import data as _data  # noqa: F401  (registers synth, ingest, split)

__all__ = ["app", "main"]
