"""``radflow models``: the registered models, their versions, aliases and gate verdicts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from radflow.cli._app import app, emit, report_console, run_command

__all__ = ["models_command"]

_VERDICT = {"passed": "[green]passed[/]", "failed": "[bold red]failed[/]"}


def _render(result: dict[str, Any]) -> None:
    console = report_console()  # gate failures and run ids uncut when piped
    if not result["models"]:
        console.print(f"no registered models in {result['tracking_uri']}", highlight=False)
        return
    for model in result["models"]:
        table = Table("version", "aliases", "gates", "test macro AUROC / MAE", "registered", "run", title=model["name"])
        for v in model["versions"]:
            metrics = v["metrics"]
            headline = metrics.get("test_macro_auroc", metrics.get("test_mae"))
            created = (
                datetime.fromtimestamp(v["created_at"] / 1000, UTC).strftime("%Y-%m-%d %H:%M")
                if v["created_at"]
                else "-"
            )
            verdict = _VERDICT.get(v["gate"] or "", "-")
            if v["gate_failures"]:
                verdict += f" ({escape(v['gate_failures'])})"
            table.add_row(
                v["version"],
                ", ".join(f"@{a}" for a in v["aliases"]) or "-",
                verdict,
                "-" if headline is None else f"{headline:.4f}",
                created,
                (v["run_id"] or "-")[:12],
            )
        console.print(table)


@app.command("models")
def models_command(
    name: Annotated[str | None, typer.Argument(help="Show only this registered model.")] = None,
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace whose mlflow.db holds the registry (default: the current one).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the workspace's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """List registered models: versions (newest first), aliases (@champion, @challenger) and gate verdicts."""
    from radflow.errors import NotFoundError
    from radflow.pipeline.workspace import find_workspace
    from radflow.registry import list_models
    from radflow.tracking import resolve_tracking_uri

    def body() -> dict[str, Any]:
        uri = tracking_uri
        if uri is None:
            try:
                uri = resolve_tracking_uri(None, find_workspace(workspace))
            except NotFoundError:
                if workspace is not None:
                    raise
                uri = None  # outside a workspace: MLFLOW_TRACKING_URI or ./mlflow.db (never created)
        return list_models(uri, name)

    emit(run_command(body), as_json, _render)
