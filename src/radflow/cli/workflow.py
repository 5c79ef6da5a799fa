"""``radflow workflow crops|list|predict|evaluate``: a workspace's workflows (:mod:`radflow.workflow`): the crop
datasets their classifiers train on, their answers on local images (torch-free), their end-to-end evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from radflow.cli._app import app, console, emit, report_console, run_command

__all__ = ["crops_command", "evaluate_command", "list_command", "predict_command", "workflow_app"]

workflow_app = typer.Typer(
    help="Workflows (detect -> crop -> classify ...): crop datasets, local answers, end-to-end evaluation.",
    no_args_is_help=True,
)
app.add_typer(workflow_app, name="workflow")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace whose params.yaml declares the workflows.")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI of the registry (default: MLFLOW_TRACKING_URI, else the workspace's)."),
]
ThreadsOpt = Annotated[int, typer.Option(help="ONNX Runtime threads per model.")]


def _render_crops(info: dict[str, Any]) -> None:
    crops, counts = info["crops"], info["counts"]
    label = crops["label"]
    prevalence = info.get("prevalence", {}).get("all", {}).get(label)
    said = f"label {label} positive {prevalence['positive']}" if prevalence else f"label {label}"
    by = f" · by the {crops['structure']} mask" if crops.get("structure") else ""
    console.print(
        f"[bold]crop dataset {info['version']}[/] · {counts['images']} crops of {crops['source_images']} images · "
        f"{counts['patients']} patients · {said} · {crops['size']} px · margin {crops['margin']:g}{by}",
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
    dataset: Annotated[
        Path, typer.Argument(help="The detection (or segmentation) dataset ingested from the table's images.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Crop dataset directory to write.")],
    table: Annotated[
        Path,
        typer.Option(
            "--boxes",
            help="Box table with per-box attributes: a COCO JSON (or its folder) or a CSV with path, x, y, width, "
            "height columns (radflow synth spine writes both); with --masks a per-image CSV (path or RSNA's id "
            "column, then the fields: boneage-training-dataset.csv).",
        ),
    ],
    label: Annotated[
        str, typer.Option("--label", help="The attribute that labels each crop (0/1; a number with --task regression).")
    ],
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
    masks: Annotated[
        Path | None,
        typer.Option(
            help="A mask source (--format masks layout, e.g. radflow synth hand --masks): each image's box is its "
            "mask's extent, cut as a crop by mask step cuts it.",
        ),
    ] = None,
    structure: Annotated[
        str | None, typer.Option(help="With --masks: the structure to crop by (default: the only one).")
    ] = None,
    task: Annotated[
        str, typer.Option(help="multilabel (0/1 labels, a classifier) or regression (numbers, e.g. bone age).")
    ] = "multilabel",
    sex_field: Annotated[
        str | None, typer.Option(help="With --masks: the field giving each crop's sex (RSNA's male).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Cut each box of a box table (or each image's mask extent, --masks) as a served workflow cuts it (margin,
    resize) into a classification or regression dataset; every crop keeps its image's patient and split."""
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
            masks=masks,
            structure=structure,
            task=task,
            sex_field=sex_field,
        )
    )
    emit(info, as_json, _render_crops)


def _render_list(result: dict[str, Any]) -> None:
    out = report_console()
    if not result["workflows"]:
        out.print("no workflows declared (add a workflows: block to params.yaml)")
    for w in result["workflows"]:
        if not w["ready"]:
            out.print(f"[bold red]{escape(w['name'])}[/]: {escape(w['error'])}", highlight=False)
            continue
        table = Table("step", "action", "kind", "input", "model", title=f"{w['name']}: {w['description']}")
        for s in w["steps"]:
            table.add_row(s["name"], s["action"], s["kind"], s["inputs"]["input"], s.get("model", "-"))
        out.print(table)
        if w["gates"]:
            shown = [
                f"{k[4:]} <= {v:g}" if k.startswith("max_") else f"{k.removeprefix('min_')} >= {v:g}"
                for k, v in w["gates"].items()
            ]
            out.print("gates: " + ", ".join(shown), highlight=False)


@workflow_app.command("list")
def list_command(
    workspace: WorkspaceOpt = Path("."),
    tracking_uri: TrackingOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The workspace's workflows: steps, models (pinned versions) and gates, or why one does not load."""
    from radflow.workflow.workspace import describe_workflow, workspace_workflows

    def body() -> dict[str, Any]:
        loaded = workspace_workflows(workspace, tracking_uri)
        return {"workflows": [describe_workflow(n, w) for n, w in loaded.items()]}

    emit(run_command(body), as_json, _render_list)


def _findings_text(findings: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{f['label']} {f['probability']:.3f}{' [bold]positive[/]' if f['positive'] else ''}" for f in findings
    )


def _render_answers(result: dict[str, Any]) -> None:
    out = report_console()
    for item in result["answers"]:
        answer = item["answer"]
        latency = " · ".join(f"{s['name']} {s['latency_ms']:.1f}" for s in answer["steps"])
        out.print(f"[bold]{escape(item['image'])}[/] ({latency} ms)", highlight=False)
        if not answer["found"]:
            out.print(f"  {escape(answer['message'])}", highlight=False)
        output = answer["answer"]
        if output.get("findings"):
            out.print(f"  {answer['output']}: {_findings_text(output['findings'])}", highlight=False)
        prediction = output.get("prediction")
        if isinstance(prediction, dict) and prediction.get("value") is not None:
            unit = f" {prediction['unit']}" if prediction.get("unit") else ""
            out.print(f"  {answer['output']}: {float(prediction['value']):.1f}{unit}", highlight=False)
        crops = output.get("crops") or []
        if crops and "findings" in crops[0]:
            table = Table("level", "box (x0, y0, x1, y1)", "detector score", "findings")
            for c in crops:
                score = c.get("source", {}).get("score")
                table.add_row(
                    str(c.get("level") or "-"),
                    ", ".join(str(v) for v in c["box"]),
                    "-" if score is None else f"{float(score):.3f}",
                    _findings_text(c["findings"]),
                )
            out.print(table)
    if result.get("patient"):
        p = result["patient"]
        out.print(f"[bold]patient[/] ({p['images']} images): {_findings_text(p['findings'])}", highlight=False)
        for level, findings in p["levels"].items():
            out.print(f"  {level}: {_findings_text(findings)}", highlight=False)


@workflow_app.command("predict")
def predict_command(
    name: Annotated[str, typer.Argument(help="The workflow (radflow workflow list).")],
    images: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM images.")],
    patient: Annotated[
        bool, typer.Option("--patient", help="The images are one patient's: add their per-patient summary.")
    ] = False,
    sex: Annotated[
        str | None,
        typer.Option(
            help="M or F: the patient's sex for a regression step (bone age), as a DICOM's PatientSex gives it; "
            "a PNG without it is answered as unknown (0.5)."
        ),
    ] = None,
    workspace: WorkspaceOpt = Path("."),
    tracking_uri: TrackingOpt = None,
    threads: ThreadsOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Answer images with a workspace's workflow here, torch-free: the served answer, per step, per crop (level)."""
    from radflow.data.decode import decode_image
    from radflow.errors import ConfigError, NotFoundError
    from radflow.workflow import patient_summary, run_workflow
    from radflow.workflow.workspace import workspace_workflow

    def answer(workflow: Any, path: Path) -> dict[str, Any]:
        if sex is None:
            return run_workflow(workflow, path.read_bytes(), name=path.name)
        decoded = decode_image(path.read_bytes(), name=path.name, **dict(workflow.decode_limits))
        decoded.meta["sex"] = sex.upper()
        return run_workflow(workflow, decoded)

    def body() -> dict[str, Any]:
        if sex is not None and sex.upper() not in ("M", "F"):
            raise ConfigError(f"--sex {sex!r}: give M or F.")
        for image in images:
            if not image.is_file():
                raise NotFoundError(f"image {image} does not exist.")
        workflow = workspace_workflow(workspace, name, tracking_uri, threads)
        answers = [answer(workflow, p) for p in images]
        result: dict[str, Any] = {
            "workflow": name,
            "answers": [{"image": str(p), "answer": a} for p, a in zip(images, answers, strict=True)],
        }
        if patient:
            result["patient"] = patient_summary([a["answer"] for a in answers])
        return result

    emit(run_command(body), as_json, _render_answers)


def _render_evaluation(result: dict[str, Any]) -> None:
    out = report_console()
    counts = result["counts"]
    judged = (
        f"{counts['answered']} answered, judged against {result['params']['label']} of {result['params']['table']}"
        if result["params"].get("judged") == "values"
        else f"{counts['truth_boxes']} true boxes, {counts['detected_boxes']} detected, {counts['matched_boxes']} "
        f"matched at IoU {result['params']['iou']:g}"
    )
    out.print(
        f"[bold]workflow {result['workflow']}[/] on the {result['params']['split']} split of dataset "
        f"{result['params']['dataset']}: {counts['images']} images · {counts['patients']} patients · {judged}",
        highlight=False,
    )
    table = Table("metric", "value", "gate", title="end to end")
    gates: dict[str, list[str]] = {}
    for c in result["gates"]["checks"]:
        bound = f">= {c['minimum']:g}" if "minimum" in c else f"<= {c['maximum']:g}"
        gates.setdefault(c["metric"], []).append(f"{'[green]' if c['passed'] else '[bold red]'}{bound}[/]")
    for metric, value in result["metrics"].items():
        table.add_row(metric, "-" if value is None else f"{value:.4f}", " ".join(gates.get(metric, [])))
    out.print(table)
    steps = Table("step", "model", "latency mean ms", "p95 ms", title="steps")
    for s in result["steps"]:
        model = s.get("model") or {}
        shown = f"{model['name']}/{model['version']}" if model.get("name") else model.get("uri", "-")
        lat = s["latency_ms"]
        steps.add_row(
            s["name"],
            shown,
            "-" if lat["mean"] is None else f"{lat['mean']:.2f}",
            "-" if lat["p95"] is None else f"{lat['p95']:.2f}",
        )
    out.print(steps)
    if result["mlflow"]:
        out.print(f"MLflow parent run {result['mlflow']['parent_run_id']} ({result['mlflow']['experiment']})")
    for failure in result["gates"]["failures"]:
        out.print(f"[bold red]gate failed:[/] {escape(failure)}", highlight=False)
    if result["gates"]["passed"] and result["gates"]["checks"]:
        out.print("[green]gates passed[/]")


def _gates(values: list[str] | None) -> dict[str, float]:
    from radflow.errors import ConfigError

    out = {}
    for text in values or []:
        metric, sep, minimum = text.partition("=")
        try:
            out[metric.strip()] = float(minimum)
        except ValueError:
            raise ConfigError(f"--gate {text!r}: expected METRIC=MINIMUM, e.g. end_to_end_sensitivity=0.6") from None
        if not sep:
            raise ConfigError(f"--gate {text!r}: expected METRIC=MINIMUM, e.g. end_to_end_sensitivity=0.6")
    return out


@workflow_app.command("evaluate")
def evaluate_command(
    name: Annotated[str, typer.Argument(help="The workflow (radflow workflow list).")],
    dataset: Annotated[Path, typer.Argument(help="The split dataset of the table's images (patients, split).")],
    table: Annotated[
        Path,
        typer.Option(
            "--boxes",
            help="Box table with the per-box truth: a COCO JSON (or its folder) or a CSV; for a workflow whose "
            "answer is a value, the per-image CSV (path or RSNA's id, then --label).",
        ),
    ],
    label: Annotated[
        str,
        typer.Option("--label", help="The per-box 0/1 attribute the classifier is judged on (or the true value)."),
    ],
    finding: Annotated[
        str | None, typer.Option(help="The classifier's label judged (default: its only one, else --label).")
    ] = None,
    split: Annotated[str, typer.Option(help="The split judged (held out: test).")] = "test",
    iou: Annotated[float, typer.Option(help="IoU at which a detected box matches a true one.")] = 0.5,
    level_field: Annotated[
        str | None, typer.Option(help="The table's level attribute, judged against the crop step's levels.")
    ] = None,
    box_label: Annotated[str | None, typer.Option(help="COCO: only true boxes of this category.")] = None,
    sex_field: Annotated[
        str | None, typer.Option(help="A value workflow: the table's sex field (RSNA's male), the regression's input.")
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate", help="METRIC=MINIMUM (or max_METRIC=MAXIMUM), over the workflow's own gates (repeatable)."
        ),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the evaluation runs.")] = "workflows",
    log: Annotated[
        bool, typer.Option("--log/--no-log", help="Log a parent run and a child per step to MLflow.")
    ] = True,
    workspace: WorkspaceOpt = Path("."),
    tracking_uri: TrackingOpt = None,
    threads: ThreadsOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Judge a workflow end to end on a held-out split: detection recall/precision, per-box AUROC/sensitivity/
    specificity on matched boxes, per-patient results (or, when its answer is a value such as bone age, MAE,
    RMSE, bias, within 12), step latency; gates' verdict (exit 1 when one fails)."""
    from radflow.tracking import resolve_tracking_uri
    from radflow.workflow.evaluate import evaluate_workflow
    from radflow.workflow.workspace import workspace_workflow

    def body() -> dict[str, Any]:
        workflow = workspace_workflow(workspace, name, tracking_uri, threads)
        gates = {**workflow.config.gates, **_gates(gate)}
        return evaluate_workflow(
            workflow,
            dataset,
            table,
            label,
            finding=finding,
            split=split,
            iou=iou,
            level_field=level_field,
            box_label=box_label,
            gates=gates,
            tracking_uri=resolve_tracking_uri(tracking_uri, workspace) if log else None,
            experiment=experiment,
            sex_field=sex_field,
        )

    result = run_command(body)
    emit(result, as_json, _render_evaluation)
    if not result["gates"]["passed"]:
        raise typer.Exit(1)
