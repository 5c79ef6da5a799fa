"""``radflow split``: patient-level, stratified train/val/test assignment of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, run_command

__all__ = ["split_command"]


def _render(summary: dict[str, Any]) -> None:
    from radflow.data.dataset import SPLITS

    counts = summary["counts"]
    requested = summary["requested"]
    console.print(
        f"[bold]dataset {summary['version']}[/] · task {summary['task']} · "
        f"val {requested['val']:g} · test {requested['test']:g} · seed {requested['seed']}"
    )
    sizes = Table("split", "images", "patients", "fraction", "official images", title="splits")
    for name in SPLITS:
        c = counts[name]
        sizes.add_row(name, str(c["images"]), str(c["patients"]), f"{c['fraction']:.1%}", str(c["official_images"]))
    console.print(sizes)
    if summary["task"] == "regression":
        target = Table("split", "n", "mean", "sd", title="target")
        for name in SPLITS:
            stats = summary["target"].get(name) or {}
            target.add_row(name, str(stats.get("n", 0)), str(stats.get("mean", "-")), str(stats.get("std", "-")))
        console.print(target)
    else:
        positives = Table("label", *SPLITS, title="positive images")
        for label, per_split in summary["positives"].items():
            cells = [
                f"[yellow]{per_split[s]}[/]" if per_split[s] == 0 and counts[s]["images"] else str(per_split[s])
                for s in SPLITS
            ]
            positives.add_row(label, *cells)
        console.print(positives)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


@app.command("split")
def split_command(
    ds: Annotated[Path, typer.Argument(help="Dataset directory (made by `radflow ingest`).")],
    val: Annotated[float, typer.Option("--val", help="Fraction of images for validation.")] = 0.1,
    test: Annotated[float, typer.Option("--test", help="Fraction of images for the test set.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same split.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the split summary as JSON.")] = False,
) -> None:
    """Split a dataset into train/val/test by patient, stratified by label, keeping the source's official split."""
    # Imported when the command runs (pandas), not with the CLI.
    from radflow.data.split import split_dataset

    summary = run_command(lambda: split_dataset(ds, val=val, test=test, seed=seed))
    emit(summary, as_json, _render)
