"""``radflow loadtest``: headless Locust against a running server; RPS, latency percentiles, failures, reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, run_command

__all__ = ["loadtest_command"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _render(result: dict[str, Any]) -> None:
    check = (
        f"ground truth: {result['cases']} cases, max error {result['max_error']:g}"
        if result["task"]
        else f"{result['cases']} noise images (no ground truth)"
    )
    console.print(
        f"[bold]{result['url']}[/] · {result['users']} users · {result['duration_s']:g} s · {check}", highlight=False
    )
    table = Table(title="load test (latency in ms)")
    table.add_column("endpoint", no_wrap=True)
    for name in ("requests", "failures", "RPS", "p50", "p95", "p99", "max"):
        table.add_column(name, justify="right", no_wrap=True)
    rows = list(result["endpoints"])
    if result["total"] is not None and len(rows) != 1:
        rows.append(result["total"])
    for r in rows:
        table.add_row(
            r["name"],
            str(r["requests"]),
            str(r["failures"]),
            "-" if r["rps"] is None else f"{r['rps']:.1f}",
            _ms(r["p50_ms"]),
            _ms(r["p95_ms"]),
            _ms(r["p99_ms"]),
            _ms(r["max_ms"]),
        )
    console.print(table)
    if result["failures"]:
        failures = Table("error", "count", title="failures")
        for f in result["failures"][:10]:
            failures.add_row(f["error"], str(f["count"]))
        console.print(failures)
    console.print(
        f"reports: {result['reports']['html']} and {len(result['reports']['csv'])} CSV files", highlight=False
    )


@app.command("loadtest")
def loadtest_command(
    url: Annotated[str, typer.Argument(help="Base URL of a running `radflow serve`, e.g. http://127.0.0.1:8000.")],
    users: Annotated[int, typer.Option("--users", help="Concurrent simulated clients.")] = 10,
    duration: Annotated[float, typer.Option("--duration", help="Seconds to run.")] = 30.0,
    spawn_rate: Annotated[
        float | None, typer.Option("--spawn-rate", help="Users started per second (default: all at once).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="radflow dataset: held-out images with ground truth.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Dataset split to send.")] = "test",
    out: Annotated[Path, typer.Option("--out", help="Folder for Locust's CSV + HTML reports.")] = Path("loadtest"),
    max_error: Annotated[
        float | None,
        typer.Option(
            "--max-error",
            help="A prediction fails beyond this: |probability - truth| (default 0.9) or |value - truth| (24 months).",
        ),
    ] = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds between one user's requests.")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Load-test POST /v1/predict with headless Locust; counts answers far from ground truth as failures."""

    def body() -> dict[str, Any]:
        from radflow.sim.loadtest import LoadtestConfig, run_loadtest

        config = LoadtestConfig(
            url=url,
            out=out,
            users=users,
            duration=duration,
            spawn_rate=spawn_rate,
            dataset=data,
            split=split,
            max_error=max_error,
            wait=wait,
        )
        if not as_json:
            console.print(f"load test: {users} users for {duration:g} s against {url}", highlight=False)
        return run_loadtest(config)

    emit(run_command(body), as_json, _render)
