"""``radflow init`` / ``run`` / ``params`` / ``lineage``: reproducible workspaces on DVC (and the hidden ``stage``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, line_printer, run_command, settings_epilog

__all__ = ["init_command", "lineage_command", "params_command", "run_pipeline_command", "stage_command"]


def _render_init(info: dict[str, Any]) -> None:
    console.print(f"[bold green]workspace[/] {info['workspace']} ({info['source']}) · commit {info['commit'][:8]}")
    console.print(f"stages: {' -> '.join(info['stages'])}")
    if info["raw_data"]:
        console.print(f"raw data {info['raw_data']} tracked by DVC (md5 {info['raw_md5']})", highlight=False)
    console.print(f"DVC remote: {info['remote']}  (dvc push / dvc pull)", highlight=False)
    console.print(f"next: cd {info['workspace']} && radflow run", highlight=False)


@app.command("init", epilog=settings_epilog())
def init_command(
    directory: Annotated[Path, typer.Argument(help="New (or empty) folder for the workspace.")],
    source: Annotated[
        str, typer.Option("--source", "-s", help="synthetic, chexpert, nih, boneage, folder or dicom.")
    ] = "synthetic",
    data: Annotated[
        Path | None, typer.Option("--data", help="Raw data folder (or label CSV) for a real source.")
    ] = None,
    remote: Annotated[str | None, typer.Option(help="DVC remote URL or path (default: DIR/.dvc-remote).")] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="multilabel (CheXpert findings), segmentation (phantom masks: synth --masks -> ingest "
            "--format masks -> small_unet; a siim or masks source is segmentation) or detection (phantom "
            "boxes: synth --boxes -> ingest --format coco-boxes -> fcos_small).",
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-S",
            metavar="KEY=VALUE",
            help="Write a param into params.yaml: -S train.epochs=3 (keys: `radflow params`).",
        ),
    ] = None,
    workflow: Annotated[
        str | None,
        typer.Option(
            "--workflow",
            help="A workflow workspace on phantoms: spine (vertebra detection -> crops -> Schmorl's node "
            "classification) or bone-age (hand segmentation -> crop by the hand mask -> age regression), each step "
            "its own pipeline in steps/STEP/, judged end to end by the workflow stage. "
            "-S STEP.KEY=V sets one step's param, -S KEY=V every step's.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Create a workspace: git + DVC, params.yaml with every tunable, and the radflow pipeline in dvc.yaml."""
    from radflow.pipeline.run import parse_sets
    from radflow.pipeline.workspace import init_workspace

    overrides = parse_sets(sets or [])
    info = run_command(
        lambda: init_workspace(
            directory, source, data, remote=remote, overrides=overrides, task=task, workflow=workflow
        )
    )
    emit(info, as_json, _render_init)


def render_results(result: dict[str, Any]) -> None:
    """The table ``radflow run`` prints: which stages ran, the test metrics and the registration."""
    stages = Table("stage", "status", "seconds", title=f"pipeline ({result['seconds']:.1f} s)")
    timing = result.get("stage_seconds", {})
    for name in result["ran"]:
        stages.add_row(name, "[green]ran[/]", f"{timing[name]:.1f}" if name in timing else "")
    for name in result["skipped"]:
        stages.add_row(name, "unchanged", "")
    console.print(stages)
    if result.get("workflow"):
        _render_workflow(result["workflow"])
        if result.get("experiment"):
            console.print(f"experiment {result['experiment']} · compare: dvc exp show · dvc metrics diff")
        return
    metrics = result["metrics"]
    if metrics:
        table = Table("metric", "value", title=f"test metrics (dataset {metrics.get('dataset_version', '?')[:12]})")
        from radflow.registry import HEADLINE_METRICS

        # The headline only; per-label numbers are in reports/evaluation and `dvc metrics show`.
        for key in HEADLINE_METRICS:
            value = metrics.get(key)
            if isinstance(value, float | int):
                table.add_row(key, f"{value:.4f}")
        console.print(table)
    reg = result["registration"]
    if reg:
        verdict = "[green]passed[/] -> @challenger" if reg["passed"] else "[red]failed[/] (no alias)"
        console.print(f"registered {reg['name']} version {reg['version']}: gates {verdict}")
        for failure in reg.get("failures", []):
            console.print(f"[red]  {failure}[/]", highlight=False)
    if result.get("experiment"):
        console.print(f"experiment {result['experiment']} · compare: dvc exp show · dvc metrics diff · dvc plots show")


def _render_workflow(judged: dict[str, Any]) -> None:
    """A workflow workspace's run: each step's registration, the end-to-end metrics and the verdict."""
    for name, step in judged["steps"].items():
        verdict = "[green]passed[/]" if step["passed"] else "[red]failed[/]: " + "; ".join(step["failures"])
        console.print(f"step {step['step']}: {name} version {step['version']} gates {verdict}", highlight=False)
    table = Table("metric", "value", title=f"workflow {judged['workflow']} end to end (test split)")
    for key, value in judged["metrics"].items():
        table.add_row(key, "" if value is None else f"{value:.4f}")
    console.print(table)
    for check in [*judged["gates"]["checks"], *judged["max_drop"]]:
        mark = "[green]ok[/]" if check["passed"] else "[red]failed[/]"
        bound = f">= {check['minimum']}" if "minimum" in check else f"<= {check.get('maximum')}"
        said = check.get("message") or f"{check['metric']} {check['value']} {bound}"
        console.print(f"  {mark} {said}", highlight=False)
    if judged["passed"]:
        promoted = ", ".join(f"{n} v{v}" for n, v in judged["promoted"].items()) or "none (already champions)"
        console.print(f"workflow [green]passed[/]: champions now {promoted}", highlight=False)
    else:
        console.print("workflow [red]failed[/]: the champions stay as they were", highlight=False)


@app.command("run", epilog=settings_epilog())
def run_pipeline_command(
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-S",
            metavar="KEY=VALUE",
            help="Change a param for this run: -S train.lr=3e-4 (keys: `radflow params`).",
        ),
    ] = None,
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace folder (default: the one holding the current folder).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Experiment name (default: DVC picks one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the workspace pipeline as a DVC experiment; only stages whose inputs changed rerun (exit 1: gate failed)."""
    from radflow.pipeline.run import run_pipeline

    show = line_printer(as_json)

    result = run_command(lambda: run_pipeline(workspace, sets or [], name=name, on_line=show))
    emit(result, as_json, render_results)
    if result.get("gates_passed") is False:
        raise typer.Exit(1)


def _render_params(rows: list[dict[str, Any]]) -> None:
    # Plain lines on stdout, one per key, so `radflow params | grep lr` finds a setting with its meaning.
    width = max(len(f"{row['key']}={_shown(row['default'])}") for row in rows)
    for row in rows:
        setting = f"{row['key']}={_shown(row['default'])}"
        typer.echo(f"{setting:<{width}}  {row['description']} ({row['type']})")


def _shown(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=2**20)
    return text.removesuffix("\n").removesuffix("\n...").strip()


@app.command("params")
def params_command(
    section: Annotated[
        str | None, typer.Argument(help="Only the keys under this section or key: train, train.augment, serve.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print key, type, default and description as JSON.")] = False,
) -> None:
    """Every setting of params.yaml (and -S KEY=VALUE of init, run, train, register) with its default and meaning."""
    from radflow.config import describe_params

    emit(run_command(lambda: describe_params(section or "")), as_json, _render_params)


def _render_lineage(info: dict[str, Any]) -> None:
    git = info["git"]
    dirty = " [yellow](dirty tree)[/]" if git["dirty"] else ""
    console.print(f"[bold]{info['model']}[/] ({info['asked']}) · run {info['run_id']}", highlight=False)
    console.print(f"git commit {git['commit']}{dirty}", highlight=False)
    if info.get("dvc_experiment"):
        console.print(f"DVC experiment {info['dvc_experiment']}", highlight=False)
    console.print(f"dataset version {info['dataset']['version']} ({info['dataset']['task']})", highlight=False)
    hashes = Table("stage", "path", "md5", title="data and outputs (dvc.lock)")
    for stage, outs in info["data_hashes"].items():
        for path, md5 in outs.items():
            hashes.add_row(stage, path, md5)
    console.print(hashes)
    if info["params_changed"]:
        console.print("params set for this run: " + ", ".join(info["params_changed"]), highlight=False)
    console.print("[bold]reproduce[/] (in a clone of the workspace):")
    for command in info["reproduce"]:
        console.print(f"  {command}", highlight=False, markup=False)


@app.command("lineage")
def lineage_command(
    model: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace whose mlflow.db holds the registry (default: current one).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the workspace's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the lineage as JSON.")] = False,
) -> None:
    """Where a registered model came from: git commit, DVC data hashes, dataset version, params; how to rebuild it."""
    from radflow.errors import NotFoundError
    from radflow.pipeline.lineage import show_lineage
    from radflow.pipeline.workspace import find_workspace
    from radflow.tracking import resolve_tracking_uri

    def body() -> dict[str, Any]:
        uri = tracking_uri
        if uri is None and workspace is not None:
            uri = resolve_tracking_uri(None, find_workspace(workspace))
        elif uri is None:
            try:
                uri = resolve_tracking_uri(None, find_workspace())
            except NotFoundError:
                uri = None  # outside a workspace: MLFLOW_TRACKING_URI or ./mlflow.db
        return show_lineage(model, uri)

    emit(run_command(body), as_json, _render_lineage)


@app.command("stage", hidden=True)
def stage_command(
    name: Annotated[
        str, typer.Argument(help="Pipeline stage: synth, ingest, split, train, evaluate, export, register.")
    ],
) -> None:
    """Run one pipeline stage in the current workspace (what dvc.yaml calls; use `radflow run` instead)."""
    from radflow.pipeline.stages import run_stage

    run_command(lambda: run_stage(name))
    console.print(f"stage {name} done")
