"""``radflow workflow crops``: the crop datasets of a workspace's workflows (:mod:`radflow.workflow`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radflow.cli._app import app, console, emit, run_command

__all__ = ["crops_command", "workflow_app"]

workflow_app = typer.Typer(
    help="Workflows (detect -> crop -> classify ...): crop datasets, local answers, end-to-end evaluation.",
    no_args_is_help=True,
)
app.add_typer(workflow_app, name="workflow")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _render_crops(info: dict[str, Any]) -> None:
    crops, counts = info["crops"], info["counts"]
    label = crops["label"]
    positives = info["prevalence"]["all"][label]["positive"]
    console.print(
        f"[bold]crop dataset {info['version']}[/] · {counts['images']} crops of {crops['source_images']} images · "
        f"{counts['patients']} patients · label {label} positive {positives} · {crops['size']} px · "
        f"margin {crops['margin']:g}",
        highlight=False,
    )
    console.print(
        " · ".join(f"{s} {counts[s]}" for s in ("train", "val", "test")) + f" (from dataset {crops['from_dataset']})",
        highlight=False,
    )
    for entry in info["skipped"][:10]:
        console.print(f"[yellow]skipped[/] an image of {entry['table']} ({entry['boxes']} boxes): {entry['error']}")
    if len(info["skipped"]) > 10:
        console.print(f"[yellow]... {len(info['skipped']) - 10} more in dataset.json[/]")


@workflow_app.command("crops")
def crops_command(
    dataset: Annotated[Path, typer.Argument(help="The detection dataset ingested from the table's images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Crop dataset directory to write.")],
    table: Annotated[
        Path,
        typer.Option(
            "--boxes",
            help="Box table with per-box attributes: a COCO JSON (or its folder) or a CSV with path, x, y, width, "
            "height columns (radflow synth spine writes both).",
        ),
    ],
    label: Annotated[str, typer.Option("--label", help="The per-box 0/1 attribute that labels each crop.")],
    keep: Annotated[
        str | None, typer.Option("--keep", help="Comma-separated attributes kept per crop in crops.parquet.")
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            help="Added on each side, a fraction of the box's side (as the workflow's crop step; default 0.1)."
        ),
    ] = None,
    size: Annotated[int, typer.Option(help="Side of the square crop, in pixels (the workflow's resize).")] = 64,
    box_label: Annotated[str | None, typer.Option(help="COCO: only boxes of this category.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Cut each box of a box table as a served workflow cuts it (margin, resize) into a classification dataset
    labelled by a per-box attribute; every crop keeps its image's patient and split."""
    from radflow.workflow.crops import DEFAULT_MARGIN, build_crops

    kept = [k.strip() for k in (keep or "").split(",") if k.strip()]
    info = run_command(
        lambda: build_crops(
            dataset,
            out,
            table,
            label,
            keep=kept,
            margin=DEFAULT_MARGIN if margin is None else margin,
            size=size,
            box_label=box_label,
        )
    )
    emit(info, as_json, _render_crops)
