"""``radflow tracking-server``: the MLflow server a team shares (PostgreSQL backend store, proxied artifacts).

A workspace points at it with one setting, ``MLFLOW_TRACKING_URI=http://HOST:PORT``: training, evaluation,
registration and every reading command then use the server instead of the workspace's ``mlflow.db``, and
``radflow run`` checks the server answers before any stage starts.
"""

from __future__ import annotations

import os
import shlex
from typing import Annotated

import typer

from radflow.cli._app import app, console, run_command

__all__ = ["tracking_server_command"]


@app.command("tracking-server")
def tracking_server_command(
    backend_store_uri: Annotated[
        str,
        typer.Option(
            "--backend-store-uri",
            envvar="RADFLOW_TRACKING_BACKEND_STORE_URI",
            help="Database for runs and the registry: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB.",
        ),
    ],
    artifacts_destination: Annotated[
        str,
        typer.Option(
            "--artifacts-destination",
            envvar="RADFLOW_TRACKING_ARTIFACTS",
            help="Where the server keeps the artifacts it proxies: a folder, or s3://... / gs://... .",
        ),
    ] = "mlflow-artifacts",
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 to serve other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 1,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(help="Host headers the server answers besides localhost, comma-separated (e.g. mlflow:5000)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command instead of running it.")] = False,
) -> None:
    """Start a shared MLflow tracking server: runs and registry in PostgreSQL, artifacts proxied through it."""
    from sqlalchemy.engine import make_url

    from radflow.tracking import check_database, database_uri, telemetry_off, tracking_server_command

    def body() -> list[str]:
        command = tracking_server_command(
            backend_store_uri, artifacts_destination, host=host, port=port, workers=workers, allowed_hosts=allowed_hosts
        )
        if not dry_run:
            check_database(database_uri(backend_store_uri))  # a clear error now, not a traceback from the server
        return command

    command = run_command(body)
    store = command.index("--backend-store-uri") + 1
    shown = [*command]
    shown[store] = make_url(command[store]).render_as_string(hide_password=True)
    if dry_run:
        typer.echo(shlex.join(shown))
        return
    console.print(
        f"MLflow tracking server on http://{host}:{port} (store {shown[store]}). "
        f"Point a workspace at it: export MLFLOW_TRACKING_URI=http://{host}:{port}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    # exec: the server is this process, so a container's stop signal (or Ctrl-C) reaches it directly.
    os.execve(command[0], command, telemetry_off(dict(os.environ)))
