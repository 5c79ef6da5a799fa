"""``radflow loop``: one cycle from reader feedback to a gated challenger (and optionally a canary)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radflow.cli._app import app, console, emit, line_printer, run_command

__all__ = ["loop_command"]


def _render(info: dict[str, Any]) -> None:
    from radflow.cli.workspace import render_results
    from radflow.feedback import held_out_summary

    exported = info["export"]
    console.print(
        f"[bold]feedback[/] {exported['images']} images exported to {exported['out']} "
        f"(skipped: {', '.join(f'{k} {v}' for k, v in exported['skipped'].items() if v) or 'none'})",
        highlight=False,
    )
    console.print(held_out_summary(exported), highlight=False)
    data = info["data_version"]
    commit = f" · commit {data['commit'][:8]}" if data["commit"] else " · unchanged"
    console.print(f"[bold]data version[/] data/feedback md5 {data['md5']}{commit}", highlight=False)
    before, after = info["dataset"]["before"], info["dataset"]["after"]
    console.print(
        f"[bold]dataset[/] {before['version'] or '(none)'} -> {after['version']} · "
        f"{info['rows_added']:+d} feedback rows (training only; {after['extra_images']} in all) · "
        f"test split {'unchanged' if info['test_split_unchanged'] else '[red]CHANGED[/]'} "
        f"({after['test_images']} images, {after['held_out_version']})",
        highlight=False,
    )
    # The registration line only for a version this cycle made; otherwise it would repeat the last run's.
    render_results({**info["run"], "metrics": {}, "registration": info["registration"] if info["new_version"] else {}})
    if not info["new_version"]:
        console.print("no new model version: nothing the pipeline depends on changed")
    for note in info["registration"].get("notes", []) if info["new_version"] else []:
        console.print(f"  {note}", highlight=False)
    canary = info["canary"]
    if canary is not None:
        if canary["started"]:
            console.print(
                f"[bold]canary[/] {canary['challenger']} takes {canary['weight']:.0%} of traffic on {canary['server']}",
                highlight=False,
            )
        else:
            console.print(f"[yellow]canary not started:[/] {canary['reason']}")


@app.command("loop")
def loop_command(
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace folder (default: the one holding the current folder).")
    ] = None,
    store_url: Annotated[
        str | None, typer.Option(help="Prediction store URL (default: the workspace's serving.db).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only feedback given since: ISO date/time or a duration (7d, 12h).")
    ] = None,
    canary: Annotated[
        float | None,
        typer.Option(help="Percent of traffic for the new challenger on --serve-url (e.g. 10); off by default."),
    ] = None,
    serve_url: Annotated[
        str | None, typer.Option(help="Running `radflow serve` to load the challenger into (admin API).")
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(help="Its admin bearer token (default: RADFLOW_ADMIN_TOKEN).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Feedback -> new data version (DVC) -> radflow run -> gate vs champion -> @challenger -> optional canary."""
    from radflow.feedback import parse_since
    from radflow.loop import run_loop

    show = line_printer(as_json)

    result = run_command(
        lambda: run_loop(
            workspace,
            store_url=store_url,
            since=parse_since(since),
            canary=canary / 100 if canary is not None else None,
            serve_url=serve_url,
            admin_token=admin_token,
            on_line=show,
        )
    )
    emit(result, as_json, _render)
