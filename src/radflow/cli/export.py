"""``radflow export``, ``radflow predict`` and ``radflow score``: ONNX export and the torch-free runtime."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, progress_bar, run_command
from radflow.errors import ConfigError, RadflowError

if TYPE_CHECKING:
    from radflow.runtime import RadflowModel

__all__ = ["export_command", "predict_command", "score_command"]

_MODEL_HELP = "Checkpoint, ONNX file, MLflow run id, runs:/RUN_ID, models:/NAME@ALIAS or models:/NAME/N."
_TRACKING_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)."


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _render_export(report: dict[str, Any]) -> None:
    meta, parity = report["metadata"], report["parity"]
    console.print(
        f"[bold green]exported[/] {report['onnx']} ({_mb(report['size_bytes'])}, opset {report['opset']}): "
        f"{meta['arch']} {meta['task']}, {meta['input_size']} px, labels {', '.join(meta['labels'])}",
        highlight=False,
    )
    console.print(
        f"parity with PyTorch: max |diff| {parity['max_abs_diff']:.2e} (limit {parity['atol']:g}) "
        f"on {parity['source']}",
        highlight=False,
    )
    q = report["int8"]
    if q is not None:
        table = Table("", "size", "ms/image batch 1", "ms/image batch 8", title=f"INT8 ({q['method']})")
        for kind in ("fp32", "int8"):
            lat = q["latency_ms_per_image"][kind]
            table.add_row(kind.upper(), _mb(q["size_bytes"][kind]), f"{lat['1']:.2f}", f"{lat['8']:.2f}")
        table.add_row("speed-up", "", f"{q['speedup']['1']:.2f}x", f"{q['speedup']['8']:.2f}x")
        console.print(table)
        metric = q.get("metric")
        if metric and metric.get("change") is not None:
            console.print(
                f"val {metric['name']}: FP32 {metric['fp32']:.4f} -> INT8 {metric['int8']:.4f} "
                f"({metric['change']:+.4f})",
                highlight=False,
            )
        console.print(f"[bold green]INT8[/] {q['path']}", highlight=False)
        for note in q["notes"]:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    if report["triton"]:
        chosen = report["triton_model"]
        precision = chosen["precision"]
        why = "--triton-model" if chosen["requested"] else "default"
        if precision == "int8" and report["int8"]["forced"]:
            why += ", although INT8 was kept by --force beyond its check"
        other = "int8" if precision == "fp32" else "fp32"
        hint = f"; --triton-model {other} for the other" if report["int8"] is not None else ""
        console.print(
            f"Triton model repository: {report['triton']} serves the {precision.upper()} model "
            f"{chosen['onnx']} ({why}{hint})",
            highlight=False,
        )
    if report["mlflow"]:
        logged = report["mlflow"]
        where = f"run {logged['run_id']}" + (
            f", versions {', '.join(logged['versions'])}" if logged["versions"] else ""
        )
        console.print(f"logged {', '.join(logged['artifacts'].values())} to {where}", highlight=False)


@app.command("export")
def export_command(
    model: Annotated[str, typer.Argument(help=_MODEL_HELP.replace("ONNX file, ", ""))],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    int8: Annotated[bool, typer.Option("--int8", help="Also write an INT8 model (FILE.int8.onnx), checked.")] = False,
    triton_repo: Annotated[
        Path | None, typer.Option("--triton-repo", help="Write a Triton model repository into this folder.")
    ] = None,
    triton_name: Annotated[
        str | None, typer.Option(help="Model name in the Triton repository (default: registered name or file stem).")
    ] = None,
    triton_model: Annotated[
        str | None,
        typer.Option(
            metavar="fp32|int8",
            help="Which model the Triton repository serves (default: int8 when --int8 built and kept it, else fp32).",
        ),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.")] = 32,
    max_queue_delay_us: Annotated[int, typer.Option(help="Triton dynamic batching queue delay (µs).")] = 2000,
    dataset: Annotated[
        Path | None,
        typer.Option("--dataset", "-d", help="Dataset for parity, calibration and the INT8 check (default: training)."),
    ] = None,
    int8_tolerance: Annotated[
        float, typer.Option(help="Largest accepted drop of val macro AUROC from FP32 to INT8.")
    ] = 0.005,
    int8_mae_tolerance: Annotated[
        float, typer.Option(help="Largest accepted rise of val MAE (months) from FP32 to INT8 (regression).")
    ] = 1.0,
    int8_dice_tolerance: Annotated[
        float, typer.Option(help="Largest accepted drop of val mean Dice from FP32 to INT8 (segmentation).")
    ] = 0.01,
    int8_map_tolerance: Annotated[
        float, typer.Option(help="Largest accepted drop of val mAP50 from FP32 to INT8 (detection).")
    ] = 0.02,
    force: Annotated[bool, typer.Option("--force", help="Keep the INT8 model even beyond the tolerance.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    tracking_uri: Annotated[str | None, typer.Option(help=_TRACKING_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export report as JSON.")] = False,
) -> None:
    """Export a model to ONNX (dynamic batch, metadata, parity-checked); optionally INT8 and a Triton repository."""
    from radflow.export import export_model

    def body() -> dict[str, Any]:
        return export_model(
            model,
            out,
            dataset=dataset,
            int8=int8,
            force=force,
            tolerance=int8_tolerance,
            mae_tolerance=int8_mae_tolerance,
            dice_tolerance=int8_dice_tolerance,
            map_tolerance=int8_map_tolerance,
            triton_repo=triton_repo,
            triton_name=triton_name,
            triton_model=triton_model,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            opset=opset,
            tracking_uri=tracking_uri,
        )

    emit(run_command(body), as_json, _render_export)


def load_runtime(model: str, tracking_uri: str | None = None, int8: bool = False) -> RadflowModel:
    """The runtime model for MODEL; a checkpoint (or a run without an ONNX export) is exported to a temp file."""
    from radflow.modelref import resolve_model_ref
    from radflow.runtime import MissingOnnxError, RadflowModel

    resolved = resolve_model_ref(model, tracking_uri)
    try:
        return RadflowModel.load(resolved, int8=int8)
    except MissingOnnxError as missing:
        if int8:
            raise
        from radflow.export.onnx import check_parity, export_onnx, parity_images
        from radflow.train.checkpoint import load_model

        try:
            checkpoint = resolved.checkpoint()
        except RadflowError:
            raise missing from None
        net, meta = load_model(checkpoint)
        path = Path(tempfile.mkdtemp(prefix="radflow-export-")) / "model.onnx"
        export_onnx(net, meta, path)
        check_parity(net, meta, path, *parity_images(meta, n=16)[:2])
        console.print(
            f"[yellow]note:[/] ran the checkpoint through a temporary ONNX export; "
            f"`radflow export {model} --out model.onnx` keeps one.",
            highlight=False,
        )
        return RadflowModel.load(path)


def _render_predictions(results: list[dict[str, Any]]) -> None:
    for result in results:
        if "error" in result:
            console.print(f"[bold red]error:[/] {result['error']}", highlight=False)
        elif "prediction" in result:
            value = result["prediction"]
            console.print(f"{result['image']}: {value['value']:.1f} {value['unit'] or ''}".rstrip(), highlight=False)
        else:
            table = Table("finding", "probability", "threshold", "positive", title=result["image"])
            for f in result["findings"]:
                mark = "[bold red]yes[/]" if f["positive"] else "no"
                table.add_row(f["label"], f"{f['probability']:.3f}", f"{f['threshold']:.3f}", mark)
            console.print(table)


@app.command("predict")
def predict_command(
    model: Annotated[str, typer.Argument(help=_MODEL_HELP)],
    images: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM files.")],
    heatmaps: Annotated[
        Path | None, typer.Option(help="Write a CAM overlay PNG per image and positive finding into this folder.")
    ] = None,
    sex: Annotated[
        str | None, typer.Option(help="M or F, for bone-age models (default: from DICOM, else unknown).")
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Use the model's INT8 export (registry or run).")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help=_TRACKING_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print predictions as JSON.")] = False,
) -> None:
    """Predict findings (or bone age) for image files; one bad file is reported without stopping the rest."""
    if sex is not None and sex not in ("M", "F"):
        raise typer.BadParameter(f"--sex must be M or F, got {sex!r}.")

    def body() -> list[dict[str, Any]]:
        runtime = load_runtime(model, tracking_uri, int8)
        results: list[dict[str, Any]] = []
        for path in images:
            try:
                data = path.read_bytes()
            except OSError as exc:
                results.append({"image": str(path), "error": f"{path}: cannot read image file ({exc.strerror})"})
                continue
            try:
                prediction = runtime.predict_bytes(data, name=str(path), sex=sex)
                entry = {"image": str(path), **prediction.to_dict()}
                if heatmaps is not None:
                    heatmaps.mkdir(parents=True, exist_ok=True)
                    written = []
                    for label in prediction.positives:
                        target = heatmaps / f"{path.stem}-{label.replace(' ', '_')}.png"
                        target.write_bytes(runtime.heatmap_png(data, label))
                        written.append(str(target))
                    entry["heatmaps"] = written
            except RadflowError as exc:
                entry = {"image": str(path), "error": str(exc)}
            results.append(entry)
        return results

    results = run_command(body)
    emit(results, as_json, _render_predictions)
    if any("error" in r for r in results):
        raise typer.Exit(2)


@app.command("score")
def score_command(
    model: Annotated[str, typer.Argument(help=_MODEL_HELP)],
    dataset: Annotated[Path, typer.Argument(help="Dataset directory (from `radflow ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file: image_id plus one column per label.")],
    split: Annotated[str, typer.Option(help="Split to score: test, val, train or all.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call.")] = 32,
    int8: Annotated[bool, typer.Option("--int8", help="Use the model's INT8 export (registry or run).")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help=_TRACKING_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Score on a Ray cluster instead: auto (the cluster this machine belongs to) or the head's HOST:PORT. "
            "One ONNX Runtime session per actor, one actor per cluster CPU; the dataset folder must be readable at "
            "the same path on every node. Same Parquet as without --ray.",
        ),
    ] = None,
) -> None:
    """Score a dataset split in batches with the ONNX runtime and write the predictions as Parquet."""
    from radflow.data.dataset import Dataset
    from radflow.runtime import score_dataset

    if out.suffix != ".parquet":
        raise typer.BadParameter(f"--out must end in .parquet, got {out}.")

    def body() -> dict[str, Any]:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
        if ray is not None:
            from radflow.scale.cluster import connect

            connect(ray)  # an unreachable cluster fails here, before the model or the data is read
        ds = Dataset.open(dataset)
        total = len(ds.indices(split))
        runtime = load_runtime(model, tracking_uri, int8)
        with progress_bar("score", quiet=as_json) as bar:
            task = bar.add_task("score", total=total)
            if ray is None:
                frame = score_dataset(
                    runtime, ds, split, batch_size, progress=lambda done: bar.update(task, completed=done)
                )
            else:
                from radflow.scale.score import score_dataset_ray

                frame = score_dataset_ray(
                    runtime, dataset, split, batch_size, ray, progress=lambda done: bar.update(task, completed=done)
                )
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
        summary = {"out": str(out), "images": len(frame), "split": split, "labels": runtime.labels, "model": model}
        return summary | ({"ray": ray} if ray is not None else {})

    def render(summary: dict[str, Any]) -> None:
        console.print(
            f"[bold green]scored[/] {summary['images']} {summary['split']} images -> {summary['out']} "
            f"({', '.join(summary['labels'])})",
            highlight=False,
        )

    emit(run_command(body), as_json, render)
