"""The ``radflow`` command line: one Typer app, commands grouped by noun in sibling modules.

Commands are thin: they parse, call a library function, and print a table or ``--json``.
Errors a user can fix (:class:`radflow.errors.RadflowError`) print one line, exit code 2.
"""

from __future__ import annotations

from radflow.cli import annotate as _annotate  # noqa: F401
from radflow.cli import demo as _demo  # noqa: F401
from radflow.cli import evaluate as _evaluate  # noqa: F401
from radflow.cli import export as _export  # noqa: F401
from radflow.cli import feedback as _feedback  # noqa: F401
from radflow.cli import gateway as _gateway  # noqa: F401
from radflow.cli import ingest as _ingest  # noqa: F401
from radflow.cli import loadtest as _loadtest  # noqa: F401
from radflow.cli import loop as _loop  # noqa: F401
from radflow.cli import models as _models  # noqa: F401
from radflow.cli import registry as _registry  # noqa: F401
from radflow.cli import serve as _serve  # noqa: F401
from radflow.cli import simulate as _simulate  # noqa: F401
from radflow.cli import split as _split  # noqa: F401
from radflow.cli import sweep as _sweep  # noqa: F401
from radflow.cli import synth as _synth  # noqa: F401
from radflow.cli import token as _token  # noqa: F401
from radflow.cli import tracking as _tracking  # noqa: F401
from radflow.cli import train as _train  # noqa: F401
from radflow.cli import worker as _worker  # noqa: F401
from radflow.cli import workflow as _workflow  # noqa: F401
from radflow.cli import workspace as _workspace  # noqa: F401
from radflow.cli._app import app, main

__all__ = ["app", "main"]
