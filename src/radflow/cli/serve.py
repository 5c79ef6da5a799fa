"""``radflow serve``: the inference service (FastAPI + ONNX Runtime) under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from radflow.cli._app import app, console, run_command
from radflow.errors import ConfigError

if TYPE_CHECKING:
    from radflow.inference import ServeSettings

__all__ = ["serve_command"]


def serve_settings(workspace: Path | None, **flags: Any) -> ServeSettings:
    """Serving settings from the flags given (``None`` = not given: environment, params.yaml, defaults decide).

    The one place the serving doors' commands (`serve`, `gateway`) turn their flags into settings.
    """
    from radflow.inference import ServeSettings

    if workspace is not None and not workspace.is_dir():
        raise ConfigError(f"--workspace {workspace} is not a folder; make one with `radflow init` or `radflow demo`.")
    given = {"workspace": workspace, **flags}
    return ServeSettings(**{k: v for k, v in given.items() if v is not None})


@app.command("serve")
def serve_command(
    workspace: Annotated[
        Path | None, typer.Option("--workspace", "-w", help="Workspace: serve its registry's champion.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Champion: ONNX file, run id or models:/NAME@ALIAS.")
    ] = None,
    challenger: Annotated[str | None, typer.Option("--challenger", help="Challenger model URI (A/B, shadow).")] = None,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Registered model name (default: registry.name, chest-xray).")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Interface to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on (default 8000).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    store_url: Annotated[str | None, typer.Option("--store-url", help="SQLAlchemy URL of the prediction log.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, help="Serving processes behind the port (N > 1: a PostgreSQL --store-url)."),
    ] = 1,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="No authentication: anyone who reaches the port (local use only).")
    ] = False,
) -> None:
    """Serve the champion (and challenger) over HTTP: /v1 images, /v2 tensors, /metrics.

    Settings: these flags > RADFLOW_* environment > the workspace's params.yaml (serve:, registry.name) > defaults.
    """

    def body() -> None:
        from radflow.serve.server import run_server

        overrides: dict[str, Any] = {
            "model": model,
            "challenger": challenger,
            "model_name": model_name,
            "tracking_uri": tracking_uri,
            "store_url": store_url,
            "host": host,
            "port": port,
            "auth": "off" if no_auth else None,
        }
        settings = serve_settings(workspace, **overrides)

        def ready(url: str) -> None:
            console.print(
                f"serving {settings.resolved_model()} on {url} — reader UI {url}/ · dashboard {url}/dashboard · "
                f"API {url}/docs (store {settings.resolved_store_url()})",
                highlight=False,
            )
            if settings.auth == "off":
                console.print("[bold red]authentication is off:[/] anyone who reaches this port can read predictions.")
            else:
                console.print(f"authentication: {settings.auth} (`radflow token create --role reader --name NAME`)")

        run_server(
            settings, host=settings.host, port=settings.port, log_level=log_level, on_ready=ready, workers=workers
        )

    run_command(body)
