"""``radflow feedback export``: reader feedback and its stored pixels as extra training data (CheXpert layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radflow.cli._app import app, console, emit, run_command

__all__ = ["export_command", "feedback_app"]

feedback_app = typer.Typer(help="Reader feedback collected by `radflow serve`.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


def _render(info: dict[str, Any]) -> None:
    from radflow.feedback import held_out_summary

    console.print(
        f"[bold]{info['images']} images[/] with reader labels written to {info['out']} (CheXpert layout, train.csv) "
        f"from {info['predictions_with_feedback']} labelled predictions ({info['feedback_rows']} feedback rows)",
        highlight=False,
    )
    skipped = {k: v for k, v in info["skipped"].items() if v}
    if info["duplicates_merged"]:
        console.print(f"{info['duplicates_merged']} duplicate images merged (latest feedback kept)")
    if skipped:
        console.print("skipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
    console.print(held_out_summary(info), highlight=False)
    if info["unknown_labels"]:
        console.print(f"[yellow]labels that are not CheXpert findings were left out: {info['unknown_labels']}[/]")
    if info["positives"]:
        console.print("positives: " + " · ".join(f"{k} {v}" for k, v in info["positives"].items()), highlight=False)
    console.print(
        "use it: list the folder in params.yaml data.extra (training split only), or run `radflow loop`",
        highlight=False,
    )


@feedback_app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (replaced if it holds an earlier export).")],
    workspace: Annotated[
        Path | None,
        typer.Option(help="Workspace whose serving.db to read; its dataset's own images are left out."),
    ] = None,
    store_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the prediction store (default: the workspace's serving.db).")
    ] = None,
    inputs_dir: Annotated[
        Path | None, typer.Option(help="Stored input images (default: inputs/ beside a SQLite store).")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="Dataset whose held-out (val/test) images are refused and whose training images are left out "
            "(default: the workspace's data/split, or data/dataset before it is split)."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only feedback given since: ISO date/time or a duration (7d, 12h).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write feedback-labelled predictions and their stored pixels as a CheXpert-layout training source."""
    from radflow.errors import ConfigError
    from radflow.feedback import export_feedback, parse_since, screen_dataset, store_location
    from radflow.pipeline.workspace import find_workspace

    def body() -> dict[str, Any]:
        if workspace is None and store_url is None:
            raise ConfigError("say where the feedback is: --workspace DIR or --store-url URL.")
        root = find_workspace(workspace) if workspace is not None else None
        url, inputs = store_location(root, store_url, inputs_dir)
        exclude = dataset or (screen_dataset(root) if root is not None else None)
        return export_feedback(out, url, inputs, since=parse_since(since), dataset=exclude)

    emit(run_command(body), as_json, _render)
