"""The evaluation report: a checkpoint + a dataset split -> one JSON document, PNG figures and a table.

:func:`evaluate_checkpoint` predicts the split and hands it to the task kind, which computes its
metrics (with :mod:`radflow.metrics`; a classification kind chooses its operating points on the
validation split, so test metrics are not tuned on the test images), names its headline numbers
and describes its figures and tables; given ``out_dir``, the report writes ``evaluation.json`` and
draws the figures.
A dense kind's split (segmentation) is predicted batch by batch, each batch's probability maps
thresholded to boolean masks as they come (:func:`predict_masks`), so the report holds the split's
predicted and true masks at a byte per pixel and structure, never float maps (a 1,000-image,
5-structure split at 256 px: 0.33 GB each instead of 2.6 GB of float64 maps); its figures include
the worst-cases gallery and its ``predictions.parquet`` holds Dice per image and structure.
A detection kind's split is predicted alike (:func:`predict_boxes`): each batch's anchors kept as
validation and serving keep them, the split's boxes ``(n, D, 6)`` and true boxes ``(n, M, 5)``
handed to the kind; its ``predictions.parquet`` holds each image's boxes per label.
:func:`evaluate_and_log` does that for the test split of a training run and logs it to MLflow:
artifacts under ``evaluation/``, headline metrics (``test_macro_auroc``, ``test_auroc_<label>``,
``test_mae``, ``test_mean_dice``, ``test_dice_<structure>`` ...) that the registry gates read, and
the checkpoint re-logged with its thresholds.
Beside the JSON the report writes ``report.html`` (:mod:`radflow.evaluate.html`: the page a clinical
governance board reads, with a model card) and, with Chromium, ``report.pdf``; after registration
:func:`log_gated_report` writes them again with the gates' verdicts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from radflow.config import EvaluateConfig, GateConfig, ModelCardConfig
from radflow.data.dataset import Dataset
from radflow.errors import DataError
from radflow.evaluate.html import REPORT_ARTIFACT, write_report
from radflow.registry import EVAL_DATASET_TAG, EVAL_SPLIT_TAG
from radflow.registry.comparison import PREDICTIONS_FILE
from radflow.tasks import TaskKind, get_task, metric_key
from radflow.tasks.evaluation import EvalData, Figure, ReportTable
from radflow.tasks.segmentation import MASK_THRESHOLD, dice_per_image, overlap_counts

if TYPE_CHECKING:
    from radflow.train.loop import TrainResult

__all__ = [
    "EVALUATION_FILE",
    "PREDICTIONS_FILE",
    "SCHEMA_VERSION",
    "evaluate_and_log",
    "evaluate_checkpoint",
    "evaluate_training",
    "log_gated_report",
    "metric_key",
    "predict_boxes",
    "predict_masks",
    "render_evaluation",
    "write_box_predictions",
    "write_mask_predictions",
    "write_predictions",
]

SCHEMA_VERSION = 1
EVALUATION_FILE = "evaluation.json"


def _check_compatible(ds: Dataset, meta: Any, dataset: Path) -> None:
    if ds.task != meta.task:
        raise DataError(
            f"the model predicts a {meta.task} task but the dataset is {ds.task}; evaluate it on a dataset "
            "of the same kind.",
            path=dataset,
        )
    missing = [label for label in meta.labels if label not in ds.labels]
    if missing:
        raise DataError(
            f"the dataset lacks the model's label(s) {missing} (dataset labels: {', '.join(ds.labels)}); "
            "ingest it with the same label set.",
            path=dataset,
        )
    size = (meta.preprocess or {}).get("size")
    if size is not None and int(size) != ds.spec.size:
        raise DataError(
            f"the model takes {size} px images but the dataset holds {ds.spec.size} px ones; "
            f"re-ingest the source with --size {size}.",
            path=dataset,
        )


def _age_bands(params: EvaluateConfig, kind: TaskKind) -> list[float]:
    # One config field serves every task; when the user did not set it, a kind may bring its own
    # (bone age in months instead of the chest default in years).
    default = kind.default_age_bands()
    if default is not None and "age_bands" not in params.model_fields_set:
        return default
    return list(params.age_bands)


def _predict(model: Any, meta: Any, ds: Dataset, split: str, device: str, batch_size: int) -> np.ndarray:
    from radflow.train.predict import predict_dataset

    return np.asarray(predict_dataset(model, meta, ds, split, batch_size=batch_size, device=device), dtype=np.float64)


def predict_masks(
    model: Any, meta: Any, ds: Dataset, rows: np.ndarray, device: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A dense model's predicted masks and the true ones of manifest ``rows``: boolean ``(n, K, S, S)`` each.

    Structures in ``meta.labels`` order; predicted masks are the probability maps at
    :data:`~radflow.tasks.segmentation.MASK_THRESHOLD`, thresholded batch by batch.
    """
    from radflow.data.masks import unpack
    from radflow.data.preprocess import PreprocessSpec
    from radflow.train.data import ShardBatches, make_loader
    from radflow.train.predict import predict_loader

    spec = PreprocessSpec.from_dict(meta.preprocess) if meta.preprocess else ds.spec
    structures = ds.structures
    order = [structures.index(label) for label in meta.labels]
    shape = (len(rows), len(order), spec.size, spec.size)
    pred, truth = np.empty(shape, dtype=bool), np.empty(shape, dtype=bool)
    model.to(device)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        loader = make_loader(ShardBatches(ds, chunk, spec), batch_size, shuffle=False)
        _, maps = predict_loader(model, meta, loader, device)
        pred[start : start + len(chunk)] = maps >= MASK_THRESHOLD
        truth[start : start + len(chunk)] = unpack(ds.masks(chunk), len(structures))[:, order]
    return pred, truth


def predict_boxes(
    model: Any, meta: Any, ds: Dataset, rows: np.ndarray, device: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A detector's kept boxes ``(n, D, 6)`` and the true boxes ``(n, M, 5)`` of manifest ``rows``, NaN padded.

    Batch by batch, each batch's activated anchors go through the kind's :meth:`~radflow.tasks.TaskKind.val_batch`
    (:func:`~radflow.tasks.detection.select_detections`, as validation and serving keep them), so the split's
    anchors are never held whole. Both at model size, label indices in ``meta.labels`` order.
    """
    from radflow.data.preprocess import PreprocessSpec
    from radflow.tasks.detection import pad_rows
    from radflow.train.data import ShardBatches, box_targets, make_loader
    from radflow.train.predict import predict_loader

    kind = get_task(meta.task)
    spec = PreprocessSpec.from_dict(meta.preprocess) if meta.preprocess else ds.spec
    truths = box_targets(ds, rows, meta.labels)
    kept = []
    model.to(device)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        loader = make_loader(ShardBatches(ds, chunk, spec), batch_size, shuffle=False)
        _, anchors = predict_loader(model, meta, loader, device)
        kept.append(kind.val_batch(anchors, np.zeros((len(chunk), 0)))[0])
    width = max([1, *(len(t) for t in truths)])
    return np.concatenate(kept) if kept else np.zeros((0, 1, 6), np.float32), pad_rows(truths, width, 5)


def _plotter(name: str) -> Callable[..., Path]:
    """The drawing function a kind's ``Figure.plot`` names. Matplotlib and scikit-learn are imported here, on the
    first figure, not with the module: ``radflow stage register`` reads it for ``log_gated_report`` and draws nothing.
    """
    from radflow.evaluate import plots

    drawers: dict[str, Callable[..., Path]] = {
        "roc": plots.roc_curves,
        "pr": plots.pr_curves,
        "reliability": plots.reliability_diagram,
        "confusion": plots.confusion_matrices,
        "scatter": plots.regression_scatter,
        "error_by_band": plots.regression_error_by_band,
        "worst_cases": plots.worst_cases,
        "froc": plots.froc_curves,
    }
    return drawers[name]


def _image_frame(manifest: Any) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {
            "image_id": manifest["image_id"].astype(str).to_numpy(),
            "patient_id": manifest["patient_id"].astype(str).to_numpy(),
        }
    )


def write_predictions(path: Path, manifest: Any, labels: list[str], targets: np.ndarray, scores: np.ndarray) -> Path:
    """Write ``predictions.parquet`` (:mod:`radflow.registry.comparison`): one row per image, in ``manifest``'s order.

    The registry's paired champion comparison reads two runs' files instead of scoring the images again.
    """
    frame = _image_frame(manifest)
    for j, label in enumerate(labels):
        if j < targets.shape[1]:
            frame[f"target:{label}"] = targets[:, j]
        if j < scores.shape[1]:
            frame[f"score:{label}"] = scores[:, j]
    frame.to_parquet(path, index=False)
    return path


def write_mask_predictions(path: Path, manifest: Any, labels: list[str], truth: np.ndarray, pred: np.ndarray) -> Path:
    """Write a dense kind's ``predictions.parquet``: one row per image, in ``manifest``'s order.

    Per structure ``dice:<s>`` (NaN when the structure is in neither mask, as the evaluation leaves
    it out), ``truth_empty:<s>`` and ``pred_empty:<s>``, so a paired champion comparison can compare
    Dice per structure on the same images. ``truth`` and ``pred`` are boolean ``(n, K, S, S)``.
    There are no ``target:``/``score:`` columns: those are the classifiers' format.
    """
    counts = overlap_counts(pred, truth)
    dice = dice_per_image(counts)
    frame = _image_frame(manifest)
    for j, label in enumerate(labels):
        frame[f"dice:{label}"] = dice[:, j]
        frame[f"truth_empty:{label}"] = counts[:, j, 2] == 0
        frame[f"pred_empty:{label}"] = counts[:, j, 1] == 0
    frame.to_parquet(path, index=False)
    return path


def write_box_predictions(path: Path, manifest: Any, labels: list[str], truth: np.ndarray, pred: np.ndarray) -> Path:
    """Write a detection kind's ``predictions.parquet``: one row per image, in ``manifest``'s order.

    Per label ``truth:<l>`` (the image's true boxes of that label, flattened ``x0, y0, x1, y1`` each) and
    ``boxes:<l>`` (its kept boxes, flattened ``x0, y0, x1, y1, score`` each, best first), at model size,
    so a paired champion comparison (:class:`~radflow.registry.gates.PairedBoxes`) recomputes mAP50 on
    the same images. ``truth`` ``(n, M, 5)`` and ``pred`` ``(n, D, 6)`` are NaN padded.
    """
    frame = _image_frame(manifest)
    for j, label in enumerate(labels):
        frame[f"truth:{label}"] = [t[t[:, 4] == j, :4].reshape(-1).astype(np.float64).tolist() for t in truth]
        frame[f"boxes:{label}"] = [
            p[p[:, 4] == j][:, [0, 1, 2, 3, 5]].reshape(-1).astype(np.float64).tolist() for p in pred
        ]
    frame.to_parquet(path, index=False)
    return path


def _untrained(kind: TaskKind, ds: Dataset, meta: Any, labels: list[str]) -> list[str]:
    """Labels with no positive in the model's train split; known only on the dataset it was trained on."""
    train_rows = ds.indices("train")
    if meta.dataset_version and meta.dataset_version == ds.version and len(train_rows):
        return kind.untrained_labels(labels, ds.manifest[labels].to_numpy(dtype=np.float64)[train_rows])
    return [label for label in getattr(meta, "untrained_labels", []) or [] if label in labels]


def _write_plots(figures: list[Figure], out_dir: Path, ds: Dataset, rows: np.ndarray) -> list[str]:
    written = []
    for f in figures:
        args = dict(f.args)
        if f.images:
            shown = rows[list(f.images)]
            args["images"] = ds.images(shown)
            args["image_ids"] = ds.manifest["image_id"].astype(str).to_numpy()[shown].tolist()
        written.append(_plotter(f.plot)(**args, path=out_dir / f.file).name)
    return written


def _dataset_facts(ds: Dataset) -> dict[str, Any]:
    """What the report's dataset section and model card say about the data: source format, split sizes, prevalence."""
    splits = {}
    for name in ("train", "val", "test"):
        rows = ds.indices(name) if ds.is_split else np.arange(0)
        if len(rows):
            patients = int(ds.manifest["patient_id"].iloc[rows].nunique())
            splits[name] = {"images": len(rows), "patients": patients}
    return {
        "source_format": (ds.info.get("source") or {}).get("format"),
        "patients": int(ds.manifest["patient_id"].nunique()),
        "splits": splits,
        "train_prevalence": (ds.info.get("prevalence") or {}).get("train"),
    }


def evaluate_checkpoint(
    checkpoint: Path,
    dataset: Path,
    split: str = "test",
    params: EvaluateConfig | None = None,
    out_dir: Path | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    gates: GateConfig | None = None,
    model_card: ModelCardConfig | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of ``dataset``; returns the evaluation JSON content.

    With ``out_dir`` the JSON (``evaluation.json``), the PNG figures and the HTML report (``report.html``,
    ``report.pdf`` when Chromium is installed) are written there; the report previews ``gates`` (default
    :class:`GateConfig`) on the values computed and carries ``model_card``'s statements.
    """
    from radflow.train.checkpoint import load_model

    params = params or EvaluateConfig()
    checkpoint, dataset = Path(checkpoint), Path(dataset)
    started = time.perf_counter()
    model, meta = load_model(checkpoint, device=device)
    ds = Dataset.open(dataset)
    _check_compatible(ds, meta, dataset)
    rows = ds.indices(split)
    if len(rows) == 0:
        raise DataError(f"split {split!r} has no images; choose another split or re-split the dataset.", path=dataset)
    labels = list(meta.labels)
    kind = get_task(meta.task)
    dense, detection = kind.network == "dense", kind.network == "detection"
    masks: np.ndarray | None = None
    if dense:
        scores, masks = predict_masks(model, meta, ds, rows, device, batch_size)
        targets = ds.manifest[labels].to_numpy(dtype=np.float64)[rows]
    elif detection:  # the kept boxes and the true ones, where the others get scores and label columns
        scores, targets = predict_boxes(model, meta, ds, rows, device, batch_size)
    else:
        scores = _predict(model, meta, ds, split, device, batch_size)
        targets = ds.manifest[labels].to_numpy(dtype=np.float64)[rows]
    warnings: list[str] = []
    if meta.dataset_version and meta.dataset_version != ds.version:
        warnings.append(
            f"the model was trained on dataset version {meta.dataset_version}; this is version {ds.version}."
        )

    def val() -> tuple[np.ndarray, np.ndarray] | None:
        val_rows = ds.indices("val")
        if dense or detection or not len(val_rows):
            return None
        val_scores = scores if split == "val" else _predict(model, meta, ds, "val", device, batch_size)
        return ds.manifest[labels].to_numpy(dtype=np.float64)[val_rows], val_scores

    data = EvalData(
        labels=labels,
        split=split,
        targets=targets,
        scores=scores,
        manifest=ds.manifest.iloc[rows],
        val=val,
        stored_thresholds=meta.thresholds,
        unit=meta.target_unit,
        n_bootstrap=params.n_bootstrap,
        ci=params.ci,
        calibration_bins=params.calibration_bins,
        threshold_method=params.threshold_method,
        target_sensitivity=params.target_sensitivity,
        age_bands=_age_bands(params, kind),
        untrained=_untrained(kind, ds, meta, labels),
        masks=masks,
        spacing=ds.spacing(rows) if masks is not None else None,  # mm when every test image states it
        warnings=warnings,
    )
    body = kind.evaluate(data)

    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": meta.task,
        "labels": labels,
        "split": split,
        "n": len(rows),
        "model": {
            "checkpoint": str(checkpoint),
            "arch": meta.arch,
            "run_id": meta.run_id,
            "epoch": meta.epoch,
            "trained_on_dataset_version": meta.dataset_version,
        },
        "dataset": {
            "path": str(dataset.resolve()),
            "version": ds.version,
            "split": split,
            "n": len(rows),
            **_dataset_facts(ds),
        },
        "config": params.model_dump(mode="json"),
        "model_card": (model_card or ModelCardConfig()).model_dump(mode="json"),
        **body,
    }
    # Flat ``{split}_<metric>`` numbers logged to MLflow and read by the registry gates.
    result["headline"] = {f"{split}_{k}": v for k, v in kind.headline(result).items()}
    result["warnings"] = warnings
    result["plots"] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if masks is not None:
            # A dense kind's figures get the true masks where the others get the label columns.
            result["plots"] = _write_plots(kind.figures(labels, masks, scores, result), out_dir, ds, rows)
            write_mask_predictions(out_dir / PREDICTIONS_FILE, ds.manifest.iloc[rows], labels, masks, scores)
        elif detection:
            result["plots"] = _write_plots(kind.figures(labels, targets, scores, result), out_dir, ds, rows)
            write_box_predictions(out_dir / PREDICTIONS_FILE, ds.manifest.iloc[rows], labels, targets, scores)
        else:
            result["plots"] = _write_plots(kind.figures(labels, targets, scores, result), out_dir, ds, rows)
            write_predictions(out_dir / PREDICTIONS_FILE, ds.manifest.iloc[rows], labels, targets, scores)
    result["seconds"] = round(time.perf_counter() - started, 3)
    if out_dir is not None:
        (out_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=2) + "\n")
        write_report(result, out_dir, gate_config=gates, pdf=params.pdf)
    return result


def evaluate_and_log(
    run_id: str,
    checkpoint: Path,
    dataset: Path,
    params: EvaluateConfig | None,
    tracking_uri: str | None,
    *,
    gates: GateConfig | None = None,
    model_card: ModelCardConfig | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on the test split and log everything to that MLflow run.

    The HTML report is logged as ``evaluation/report.html`` (:data:`REPORT_ARTIFACT`). Thresholds are
    stored in the checkpoint (``ModelMeta.thresholds``) and the updated file is
    re-logged as ``checkpoint/best.pt``, so serving and export use the operating points chosen here.
    """
    from mlflow.entities import Metric, RunTag

    from radflow.tracking import client as mlflow_client
    from radflow.tracking import resolve_tracking_uri
    from radflow.train.checkpoint import update_checkpoint_meta

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    with tempfile.TemporaryDirectory(prefix="radflow-eval-") as tmp:
        out_dir = Path(tmp) / "evaluation"
        result = evaluate_checkpoint(checkpoint, dataset, "test", params, out_dir, gates=gates, model_card=model_card)
        client.log_artifacts(run_id, str(out_dir), "evaluation")
        now = int(time.time() * 1000)
        logged = [Metric(k, float(v), now, 0) for k, v in result["headline"].items() if v is not None]
        tags = [
            RunTag(EVAL_DATASET_TAG, result["dataset"]["version"]),
            RunTag(EVAL_SPLIT_TAG, result["split"]),
        ]
        client.log_batch(run_id, metrics=logged, tags=tags)
        if "thresholds" in result:
            per_label = result["thresholds"]["per_label"]
            thresholds = {label: float(e["threshold"]) for label, e in per_label.items() if e["threshold"] is not None}
            update_checkpoint_meta(
                checkpoint, thresholds=thresholds, untrained_labels=list(result.get("untrained_labels", []))
            )
            # The artifact keeps the name the registry downloads, whatever the local file is called.
            copy = Path(tmp) / "checkpoint" / "best.pt"
            copy.parent.mkdir()
            shutil.copyfile(checkpoint, copy)
            client.log_artifact(run_id, str(copy), "checkpoint")
    return result


def evaluate_training(
    result: TrainResult,
    dataset: Path,
    params: EvaluateConfig | None = None,
    *,
    gates: GateConfig | None = None,
    model_card: ModelCardConfig | None = None,
) -> dict[str, Any]:
    """The test-split evaluation ``radflow train`` ends with: :func:`evaluate_and_log` on the run's best checkpoint.

    Also stored as ``result.evaluation``.
    """
    result.evaluation = evaluate_and_log(
        run_id=result.run_id,
        checkpoint=result.checkpoint_path,
        dataset=dataset,
        params=params,
        tracking_uri=result.tracking_uri,
        gates=gates,
        model_card=model_card,
    )
    return result.evaluation


def log_gated_report(
    run_id: str, registration: dict[str, Any], tracking_uri: str | None = None, gates: GateConfig | None = None
) -> list[str]:
    """Write the run's report again with the registry's verdicts and log it over ``evaluation/report.html``.

    Called with a :func:`radflow.registry.register` result after registration (the ``register``
    stage; the registry does not import the report, which imports the registry). The figures and
    JSON come from the run's logged evaluation. Returns the artifact paths logged: none, with a log
    line, when the run has no logged evaluation (its gates then failed for want of one and said so).
    """
    import logging

    from radflow.tracking import client as mlflow_client
    from radflow.tracking import resolve_tracking_uri

    client = mlflow_client(resolve_tracking_uri(tracking_uri or registration.get("tracking_uri")))
    logged = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "evaluation")}
    if EVALUATION_FILE not in logged:
        logging.getLogger(__name__).info("run %s has no logged evaluation; no report to write with verdicts.", run_id)
        return []
    with tempfile.TemporaryDirectory(prefix="radflow-report-") as tmp:
        fetched = Path(client.download_artifacts(run_id, f"evaluation/{EVALUATION_FILE}", tmp))
        result = json.loads(fetched.read_text())
        for name in result.get("plots", []):
            if name in logged:
                client.download_artifacts(run_id, f"evaluation/{name}", tmp)
        pdf = bool(result.get("config", {}).get("pdf", True))
        written = write_report(result, fetched.parent, gates=registration, gate_config=gates, pdf=pdf)
        for path in written:
            client.log_artifact(run_id, str(path), REPORT_ARTIFACT.rsplit("/", 1)[0])
        return [f"{REPORT_ARTIFACT.rsplit('/', 1)[0]}/{p.name}" for p in written]


# ---------------------------------------------------------------------------------------------
# Printing


def _table(spec: ReportTable) -> Table:
    table = Table(*spec.columns, title=spec.title)
    for i, rows in enumerate(spec.sections):
        if i:
            table.add_section()
        for row in rows:
            table.add_row(*row)
    return table


def render_evaluation(result: dict[str, Any], console: Console | None = None) -> None:
    """Print an evaluation: per label n, prevalence, AUROC [CI], AUPRC, sensitivity, specificity, threshold."""
    console = console or Console()
    ds = result["dataset"]
    console.print(
        f"[bold]{result['task']} evaluation[/] · split {result['split']} · n {result['n']} · "
        f"dataset {ds['version']} · model {result['model']['arch']} (epoch {result['model']['epoch']})"
    )
    for block in get_task(result["task"]).summary(result):
        console.print(_table(block) if isinstance(block, ReportTable) else block)
    for warning in result.get("warnings", []):
        console.print(f"[yellow]note:[/] {warning}", highlight=False)
    if result.get("plots"):
        console.print(f"figures: {', '.join(result['plots'])}")
