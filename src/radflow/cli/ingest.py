"""``radflow ingest``: a source in a known format to a versioned dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, progress_bar, run_command
from radflow.data.formats import FORMATS

__all__ = ["ingest_command"]


def _render(info: dict[str, Any]) -> None:
    counts = info["counts"]
    console.print(
        f"[bold]dataset {info['version']}[/] · task {info['task']} · {counts['images']} images · "
        f"{counts['patients']} patients · {counts['studies']} studies · {info['preprocess']['size']} px"
    )
    if info["task"] == "regression":
        stats = info["prevalence"]["all"]
        console.print(f"target {info['labels'][0]}: mean {stats['mean']} · sd {stats['std']}")
    else:
        table = Table("label", "positive", "known", "prevalence", title="labels")
        for label, stats in info["prevalence"]["all"].items():
            known = stats["known"]
            share = f"{stats['positive'] / known:.1%}" if known else "-"
            table.add_row(label, str(stats["positive"]), str(known), share)
        console.print(table)
    if info.get("boxes"):
        boxes = info["boxes"]
        readers = f" · {len(boxes['readers'])} readers, fused for training" if boxes["readers"] else ""
        counts = ", ".join(f"{label} {n}" for label, n in boxes["counts"].items())
        console.print(f"boxes (training set): {counts}{readers}", highlight=False)
    ingest_stats = info.get("ingest", {})
    console.print(
        f"decoded {ingest_stats.get('decoded_images', 0)} · reused {ingest_stats.get('reused_images', 0)} "
        f"from the previous version · skipped {len(info['skipped'])}"
    )
    for entry in info["skipped"][:10]:
        # Paths are not in dataset.json (they can name patients): the table row and key find the file.
        row = f", row {entry['row']}" if entry.get("row") else ""
        where = f"{entry.get('table') or 'file'}{row} (source_key {entry.get('source_key') or '-'})"
        console.print(f"[yellow]skipped[/] {where}: {entry['error']}", highlight=False)
    if len(info["skipped"]) > 10:
        console.print(f"[yellow]... {len(info['skipped']) - 10} more in dataset.json[/]")
    for warning in [*_unlabelled_warning(info), *info.get("warnings", [])]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _unlabelled_warning(info: dict[str, Any]) -> list[str]:
    """A dataset without a single label column can be scored, not trained on: say so, and how to add labels."""
    if info["task"] == "regression" or info.get("labels"):
        return []
    fix = (
        "pass --labels-csv (a CSV keyed by SOPInstanceUID or path, one column per label)"
        if info.get("source", {}).get("format") == "dicom"
        else "give a source with label columns"
    )
    return [
        f"dataset {info['version']} has no labels: it can be scored (`radflow score`) or serve as a drift reference, "
        f"but `radflow train` and `radflow evaluate` need labels; {fix}."
    ]


@app.command("ingest")
def ingest_command(
    src: Annotated[Path, typer.Argument(help="Source folder (or label CSV) to ingest.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"Source format: {', '.join(FORMATS)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")],
    size: Annotated[int, typer.Option(help="Side of the square training image, in pixels.")] = 256,
    uncertain: Annotated[
        str,
        typer.Option(help="CheXpert uncertain (-1) policy: zeros|ones|ignore, per label as 'zeros,Edema=ones'."),
    ] = "zeros",
    labels: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated label columns (segmentation: structures; detection: box labels) to keep "
            "(default: all)."
        ),
    ] = None,
    frontal_only: Annotated[bool, typer.Option("--frontal-only", help="Keep frontal views only.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on the first bad file instead of skipping it.")
    ] = False,
    labels_csv: Annotated[
        Path | None, typer.Option(help="DICOM format: labels CSV keyed by SOPInstanceUID or path.")
    ] = None,
    salt_file: Annotated[
        Path | None, typer.Option(help="Pseudonymisation key file (default: .radflow-salt beside the dataset).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print dataset.json as JSON.")] = False,
) -> None:
    """Decode, de-identify, preprocess and version a source: CheXpert, NIH, RSNA bone-age, folder or DICOM
    (classification, regression), SIIM-ACR RLE or a folder of images with masks/COCO/DICOM SEG (segmentation),
    RSNA Pneumonia, VinBigData (several readers, fused), NIH BBox_List, COCO JSON or Label Studio boxes (detection)."""
    # The readers (pandas, pydicom) load when the command runs, not with the CLI: `radflow --help` stays quick.
    from radflow.data.ingest import IngestOptions, ingest

    options = IngestOptions(
        size=size,
        uncertain=uncertain,
        labels=labels,
        frontal_only=frontal_only,
        strict=strict,
        workers=workers,
        labels_csv=labels_csv,
        salt_file=salt_file,
    )

    def body() -> dict[str, Any]:
        with progress_bar("ingest", quiet=as_json) as bar:
            task = bar.add_task("ingest", total=None)
            return ingest(
                src, fmt, out, options, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )

    info = run_command(body)
    emit(info, as_json, _render)
