"""``radflow simulate``: a clinic's traffic (new patients or a split, drift, ground-truth feedback) to a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, run_command

__all__ = ["simulate_command"]


def _render(summary: dict[str, Any]) -> None:
    from radflow.sim.drift import DriftSpec

    drift = str(DriftSpec(**summary["drift"]))
    clinic = summary["clinic"]
    source = (
        f"clinic pool of {clinic['images']} new {clinic['kind']} phantoms ({clinic['patients']} patients)"
        if clinic
        else summary["source"].replace(":", " ")
    )
    console.print(
        f"[bold]{summary['url']}[/] · mode {summary['mode']} · {source} · "
        f"drift {drift}" + (" · [yellow]interrupted[/]" if summary["interrupted"] else ""),
        highlight=False,
    )
    table = Table("measure", "value", title="simulation")
    failed = summary["failed"]
    table.add_row("sent", str(summary["sent"]))
    table.add_row("answered", str(summary["answered"]))
    table.add_row("failed", ", ".join(f"{k}: {v}" for k, v in failed.items()) if failed else "0")
    if summary["not_sent"]:
        table.add_row("not sent (stopped)", str(summary["not_sent"]))
    fb_failed = summary["feedback_failed"]
    feedback = str(summary["feedback_posted"])
    if fb_failed:
        feedback += " (failed " + ", ".join(f"{k}: {v}" for k, v in fb_failed.items()) + ")"
    table.add_row("feedback posted", feedback)
    if summary["feedback_skipped"]:
        table.add_row("feedback skipped (no known label)", str(summary["feedback_skipped"]))
    table.add_row("rate (target / achieved)", f"{summary['target_rate']:g} / {summary['achieved_rate']:.2f} req/s")
    table.add_row("duration", f"{summary['elapsed_s']:.1f} s")
    latency = summary["latency_ms"]
    if latency:
        table.add_row(
            "latency p50 / p95 / p99", f"{latency['p50']:.1f} / {latency['p95']:.1f} / {latency['p99']:.1f} ms"
        )
    for arm, count in summary["arms"].items():
        table.add_row(f"answered by {arm}", str(count))
    triage = summary.get("triage")
    if triage and triage["worklist"]:
        w, f = triage["worklist"], triage["fifo"]
        table.add_row(
            f"urgent time-to-read p50 / p90 ({triage['urgent_studies']} urgent studies)",
            f"worklist {w['p50']:.1f} / {w['p90']:.1f} s · arrival order {f['p50']:.1f} / {f['p90']:.1f} s",
        )
        room = f"{triage['readers']} reader(s), {triage['read_s']:.2f} s a study, {triage['flagged']} flagged urgent"
        table.add_row("reading room", room)
    console.print(table)
    if clinic and clinic["dropped"]:
        console.print(f"{clinic['dropped']} phantoms left out of the pool: each resembles a held-out image")
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


@app.command("simulate")
def simulate_command(
    url: Annotated[str, typer.Argument(help="Base URL of a running `radflow serve`, e.g. http://127.0.0.1:8000.")],
    data: Annotated[
        Path, typer.Option("--data", help="radflow dataset the traffic is for (its labels, size and patients).")
    ],
    rate: Annotated[float, typer.Option("--rate", help="Mean images per second (Poisson arrivals).")] = 2.0,
    mode: Annotated[
        str, typer.Option("--mode", help="single: one image per arrival; batch: worklist bursts.")
    ] = "single",
    duration: Annotated[float, typer.Option("--duration", help="Seconds to send for (Ctrl-C stops earlier).")] = 60.0,
    drift: Annotated[
        str | None,
        typer.Option("--drift", help="Injected drift, e.g. brightness=0.3,contrast=0.7,noise=0.05,blur=1.5."),
    ] = None,
    feedback_rate: Annotated[
        float, typer.Option("--feedback-rate", help="Fraction of answers that get ground-truth feedback.")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of images, drift noise and feedback choice.")] = 0,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="Send this dataset split (train, val, test, all) instead of the clinic's new patients; "
            "val/test traffic is held out and its feedback can never become training data.",
        ),
    ] = None,
    clinic_images: Annotated[
        int, typer.Option("--clinic-images", help="Phantoms of new patients in the clinic pool (without --split).")
    ] = 100,
    batch_size: Annotated[float, typer.Option("--batch-size", help="Mean images per burst in batch mode.")] = 8.0,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Most requests in flight at once.")] = 16,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before a request counts as failed.")] = 30.0,
    reader: Annotated[str, typer.Option("--reader", help="Reader id written with the feedback.")] = "simulator",
    urgent: Annotated[
        list[str] | None,
        typer.Option(
            "--urgent",
            help="LABEL=P urgency threshold of the triage figure (repeat; the worklist's kafka.urgent); "
            "none: the model's positive findings are urgent.",
        ),
    ] = None,
    readers: Annotated[int, typer.Option("--readers", help="Readers of the modelled reading room.")] = 1,
    read_seconds: Annotated[
        float | None, typer.Option("--read-seconds", help="Seconds a read takes; default: readers 90% busy.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Send a clinic's images (new patients by default) as it would: Poisson arrivals, optional drift, feedback."""

    def body() -> dict[str, Any]:
        from radflow.sim.drift import parse_drift
        from radflow.sim.simulator import SimulationConfig, held_out_warning, simulate

        config = SimulationConfig(
            url=url,
            dataset=data,
            rate=rate,
            mode=mode,  # type: ignore[arg-type]  # checked by SimulationConfig
            duration=duration,
            drift=parse_drift(drift),
            feedback_rate=feedback_rate,
            seed=seed,
            split=split,
            clinic_images=clinic_images,
            batch_size=batch_size,
            concurrency=concurrency,
            timeout=timeout,
            reader=reader,
            urgent=_thresholds(urgent or []),
            readers=readers,
            read_seconds=read_seconds,
        )
        if not as_json:
            console.print(f"simulating {rate:g} img/s for {duration:g} s against {url} (Ctrl-C stops)", highlight=False)
            if config.held_out:
                console.print(f"[yellow]warning:[/] {held_out_warning(str(split))}", highlight=False)
        return simulate(config).to_dict()

    emit(run_command(body), as_json, _render)


def _thresholds(items: list[str]) -> dict[str, float]:
    from radflow.errors import ConfigError

    out: dict[str, float] = {}
    for item in items:
        label, sep, value = item.partition("=")
        try:
            out[label.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not label.strip():
            raise ConfigError(f"--urgent {item!r}: expected LABEL=PROBABILITY, e.g. --urgent Pneumothorax=0.5.")
    return out
