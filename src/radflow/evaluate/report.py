"""The evaluation report: a checkpoint + a dataset split -> one JSON document, PNG figures and a table.

:func:`evaluate_checkpoint` predicts the split, chooses operating points on the validation split
(so test metrics are not tuned on the test images), computes every metric of
:mod:`radflow.metrics` and, given ``out_dir``, writes ``evaluation.json`` and the figures.
:func:`evaluate_and_log` does that for the test split of a training run and logs it to MLflow:
artifacts under ``evaluation/``, headline metrics (``test_macro_auroc``, ``test_auroc_<label>``,
``test_mae`` ...) that the registry gates read, and the checkpoint re-logged with its thresholds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from radflow.config import EvaluateConfig
from radflow.data.dataset import Dataset
from radflow.errors import DataError
from radflow.evaluate import plots
from radflow.metrics import metrics as M
from radflow.registry import EVAL_DATASET_TAG, EVAL_SPLIT_TAG
from radflow.tasks import metric_key

if TYPE_CHECKING:
    from radflow.train.loop import TrainResult

__all__ = [
    "EVALUATION_FILE",
    "SCHEMA_VERSION",
    "evaluate_and_log",
    "evaluate_checkpoint",
    "evaluate_training",
    "metric_key",
    "render_evaluation",
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


def _age_bands(params: EvaluateConfig, task: str) -> list[float]:
    # One config field serves both tasks; when the user did not set it, regression (bone age, months)
    # gets month bands instead of the chest default in years.
    if task == "regression" and "age_bands" not in params.model_fields_set:
        return list(M.REGRESSION_AGE_BANDS)
    return list(params.age_bands)


def _predict(model: Any, meta: Any, ds: Dataset, split: str, device: str, batch_size: int) -> np.ndarray:
    from radflow.train.predict import predict_dataset

    return np.asarray(predict_dataset(model, meta, ds, split, batch_size=batch_size, device=device), dtype=np.float64)


def _multilabel(
    ds: Dataset,
    meta: Any,
    model: Any,
    split: str,
    rows: np.ndarray,
    scores: np.ndarray,
    targets: np.ndarray,
    params: EvaluateConfig,
    device: str,
    batch_size: int,
    warnings: list[str],
) -> dict[str, Any]:
    labels = list(meta.labels)
    val_rows = ds.indices("val")
    if len(val_rows):
        val_scores = scores if split == "val" else _predict(model, meta, ds, "val", device, batch_size)
        val_targets = ds.manifest[labels].to_numpy(dtype=np.float64)[val_rows]
        per_label = M.choose_thresholds(
            val_targets, val_scores, labels, params.threshold_method, params.target_sensitivity, meta.thresholds
        )
        chosen_on = "val"
        if split == "val":
            warnings.append("thresholds were chosen on the split being evaluated (val); binary metrics are optimistic.")
    else:
        stored = meta.thresholds or {}
        per_label = {
            label: {
                "threshold": float(stored.get(label, 0.5)),
                "source": "checkpoint" if label in stored else "default 0.5",
            }
            for label in labels
        }
        chosen_on = "checkpoint" if stored else "default"
        warnings.append("the dataset has no val split; thresholds come from the checkpoint (or 0.5).")
    thresholds = {label: float(entry["threshold"]) for label, entry in per_label.items()}
    result = M.multilabel_metrics(
        targets,
        scores,
        labels,
        thresholds,
        n_bootstrap=params.n_bootstrap,
        ci=params.ci,
        calibration_bins=params.calibration_bins,
    )
    for label, entry in result["per_label"].items():
        if entry["reason"]:
            warnings.append(f"{label}: {entry['reason']}.")
    calibration = result.pop("calibration")
    return {
        "thresholds": {
            "method": params.threshold_method,
            "target_sensitivity": params.target_sensitivity if params.threshold_method == "sensitivity" else None,
            "chosen_on": chosen_on,
            "per_label": per_label,
        },
        "metrics": result,
        "calibration": calibration,
        "subgroups": M.subgroup_metrics(
            targets, scores, labels, ds.manifest.iloc[rows], _age_bands(params, "multilabel")
        ),
    }


def _headline(task: str, split: str, body: dict[str, Any]) -> dict[str, float | None]:
    """Flat ``{split}_<metric>`` numbers logged to MLflow and read by the registry gates."""
    m = body["metrics"]
    out: dict[str, float | None] = {}
    if task == "regression":
        out.update(mae=m["mae"], rmse=m["rmse"], bias=m["bias"])
        if m.get("mae_ci"):
            out.update(mae_ci_low=m["mae_ci"][0], mae_ci_high=m["mae_ci"][1])
        for band, entry in m["by_band"].items():
            out[f"mae_{metric_key(band)}"] = entry["mae"]
    else:
        per = m["per_label"] if task == "multilabel" else m["per_class"]
        out.update(macro_auroc=m["macro"]["auroc"], macro_auprc=m["macro"]["auprc"])
        if m["macro"].get("auroc_ci"):
            out.update(macro_auroc_ci_low=m["macro"]["auroc_ci"][0], macro_auroc_ci_high=m["macro"]["auroc_ci"][1])
        if task == "multilabel":
            out.update(micro_auroc=m["micro"]["auroc"], ece=body["calibration"]["ece_pooled"])
        else:
            out["accuracy"] = m["accuracy"]
        for label, entry in per.items():
            key = metric_key(label)
            out[f"auroc_{key}"] = entry["auroc"]
            out[f"auprc_{key}"] = entry["auprc"]
            if task == "multilabel":
                out[f"sensitivity_{key}"] = entry.get("sensitivity")
                out[f"specificity_{key}"] = entry.get("specificity")
    return {f"{split}_{k}": v for k, v in out.items()}


def _write_plots(
    task: str,
    labels: list[str],
    targets: np.ndarray,
    scores: np.ndarray,
    body: dict[str, Any],
    out_dir: Path,
    unit: str | None,
) -> list[str]:
    written: list[Path] = []
    m = body["metrics"]
    if task == "regression":
        written.append(plots.regression_scatter(targets[:, 0], scores[:, 0], out_dir / "scatter.png", unit))
        written.append(plots.regression_error_by_band(m["by_band"], out_dir / "error_by_band.png", unit))
        return [p.name for p in written]
    if task == "multilabel":
        per = m["per_label"]
        y = targets
        matrices = {
            f"{label} @ {entry['threshold']:.3g}": [
                [entry["confusion"]["tn"], entry["confusion"]["fp"]],
                [entry["confusion"]["fn"], entry["confusion"]["tp"]],
            ]
            for label, entry in per.items()
            if entry.get("confusion")
        }
        written.append(plots.confusion_matrices(matrices, out_dir / "confusion.png"))
        calibration = body["calibration"]
        curves = {"all labels": calibration["pooled"]}
        eces = {"all labels": calibration["ece_pooled"], **{label: per[label]["ece"] for label in labels}}
        if len(labels) <= 6:
            curves.update(calibration["per_label"])
    else:
        per = m["per_class"]
        y = np.full(scores.shape, np.nan)
        ok = ~np.isnan(targets).any(axis=1)
        y[ok] = targets[ok]
        written.append(
            plots.confusion_matrices({"classes (arg-max)": m["confusion"]}, out_dir / "confusion.png", labels)
        )
        calibration = m["calibration"]
        curves = dict(calibration["per_label"])
        eces = {}
    written.append(plots.roc_curves(y, scores, labels, {k: v["auroc"] for k, v in per.items()}, out_dir / "roc.png"))
    written.append(plots.pr_curves(y, scores, labels, {k: v["auprc"] for k, v in per.items()}, out_dir / "pr.png"))
    written.append(plots.reliability_diagram(curves, eces, out_dir / "calibration.png"))
    return [p.name for p in written]


def evaluate_checkpoint(
    checkpoint: Path,
    dataset: Path,
    split: str = "test",
    params: EvaluateConfig | None = None,
    out_dir: Path | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of ``dataset``; returns the evaluation JSON content.

    With ``out_dir`` the JSON (``evaluation.json``) and the PNG figures are written there.
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
    scores = _predict(model, meta, ds, split, device, batch_size)
    targets = ds.manifest[labels].to_numpy(dtype=np.float64)[rows]
    warnings: list[str] = []
    if meta.dataset_version and meta.dataset_version != ds.version:
        warnings.append(
            f"the model was trained on dataset version {meta.dataset_version}; this is version {ds.version}."
        )

    body: dict[str, Any]
    if meta.task == "multilabel":
        body = _multilabel(ds, meta, model, split, rows, scores, targets, params, device, batch_size, warnings)
    elif meta.task == "multiclass":
        mc = M.multiclass_metrics(targets, scores, labels, n_bootstrap=params.n_bootstrap, ci=params.ci)
        body = {"metrics": mc}
        dropped = len(rows) - mc["n"]
        if dropped:
            warnings.append(f"{dropped} image(s) without exactly one known class were left out.")
    else:
        sex = ds.manifest["sex"].fillna("").astype(str).to_numpy()[rows] if "sex" in ds.manifest else None
        reg = M.regression_metrics(
            targets[:, 0],
            scores[:, 0],
            _age_bands(params, "regression"),
            n_bootstrap=params.n_bootstrap,
            ci=params.ci,
            sex=sex,
        )
        body = {"metrics": reg, "unit": meta.target_unit}

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
        "dataset": {"path": str(dataset.resolve()), "version": ds.version, "split": split, "n": len(rows)},
        "config": params.model_dump(mode="json"),
        **body,
    }
    result["headline"] = _headline(meta.task, split, result)
    result["warnings"] = warnings
    result["plots"] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        result["plots"] = _write_plots(meta.task, labels, targets, scores, result, out_dir, meta.target_unit)
    result["seconds"] = round(time.perf_counter() - started, 3)
    if out_dir is not None:
        (out_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate_and_log(
    run_id: str,
    checkpoint: Path,
    dataset: Path,
    params: EvaluateConfig | None,
    tracking_uri: str | None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on the test split and log everything to that MLflow run.

    Thresholds are stored in the checkpoint (``ModelMeta.thresholds``) and the updated file is
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
        result = evaluate_checkpoint(checkpoint, dataset, "test", params, out_dir)
        client.log_artifacts(run_id, str(out_dir), "evaluation")
        now = int(time.time() * 1000)
        logged = [Metric(k, float(v), now, 0) for k, v in result["headline"].items() if v is not None]
        tags = [
            RunTag(EVAL_DATASET_TAG, result["dataset"]["version"]),
            RunTag(EVAL_SPLIT_TAG, result["split"]),
        ]
        client.log_batch(run_id, metrics=logged, tags=tags)
        if "thresholds" in result:
            thresholds = {label: float(e["threshold"]) for label, e in result["thresholds"]["per_label"].items()}
            update_checkpoint_meta(checkpoint, thresholds=thresholds)
            # The artifact keeps the name the registry downloads, whatever the local file is called.
            copy = Path(tmp) / "checkpoint" / "best.pt"
            copy.parent.mkdir()
            shutil.copyfile(checkpoint, copy)
            client.log_artifact(run_id, str(copy), "checkpoint")
    return result


def evaluate_training(result: TrainResult, dataset: Path, params: EvaluateConfig | None = None) -> dict[str, Any]:
    """The test-split evaluation ``radflow train`` ends with: :func:`evaluate_and_log` on the run's best checkpoint.

    Also stored as ``result.evaluation``.
    """
    result.evaluation = evaluate_and_log(
        run_id=result.run_id,
        checkpoint=result.checkpoint_path,
        dataset=dataset,
        params=params,
        tracking_uri=result.tracking_uri,
    )
    return result.evaluation


# ---------------------------------------------------------------------------------------------
# Printing


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _auroc_cell(entry: dict[str, Any]) -> str:
    if entry.get("auroc") is None:
        return "n/a"
    ci = entry.get("auroc_ci")
    return f"{entry['auroc']:.3f} [{_f(ci[0])}-{_f(ci[1])}]" if ci else f"{entry['auroc']:.3f}"


def render_evaluation(result: dict[str, Any], console: Console | None = None) -> None:
    """Print an evaluation: per label n, prevalence, AUROC [CI], AUPRC, sensitivity, specificity, threshold."""
    console = console or Console()
    ds = result["dataset"]
    console.print(
        f"[bold]{result['task']} evaluation[/] · split {result['split']} · n {result['n']} · "
        f"dataset {ds['version']} · model {result['model']['arch']} (epoch {result['model']['epoch']})"
    )
    m = result["metrics"]
    ci_pct = f"{result['config']['ci']:.0%}"
    if result["task"] == "regression":
        unit = f" {result['unit']}" if result.get("unit") else ""
        ci = m.get("mae_ci")
        ci_text = f" [{_f(ci[0], 2)}-{_f(ci[1], 2)}]" if ci else ""
        console.print(
            f"MAE {_f(m['mae'], 2)}{unit}{ci_text} · RMSE {_f(m['rmse'], 2)} · bias {_f(m['bias'], 2)} · "
            f"target sd {_f(m.get('target_std'), 2)}"
        )
        table = Table("band", "n", "MAE", "bias", title="error by band of the true value")
        for band, entry in m["by_band"].items():
            table.add_row(band, str(entry["n"]), _f(entry["mae"], 2), _f(entry["bias"], 2))
        console.print(table)
    elif result["task"] == "multiclass":
        console.print(f"accuracy {_pct(m['accuracy'])} · macro AUROC {_auroc_cell(m['macro'])}")
        table = Table("class", "n", "prevalence", f"AUROC [{ci_pct} CI]", "AUPRC", "sens", "PPV")
        for label, e in m["per_class"].items():
            table.add_row(
                label,
                str(e["n"]),
                _pct(e["prevalence"]),
                _auroc_cell(e),
                _f(e["auprc"]),
                _f(e["sensitivity"]),
                _f(e["ppv"]),
            )
        console.print(table)
    else:
        how = result["thresholds"]
        table = Table(
            "label",
            "n",
            "prevalence",
            f"AUROC [{ci_pct} CI]",
            "AUPRC",
            "sens",
            "spec",
            "threshold",
            title=f"thresholds: {how['method']} on {how['chosen_on']}",
        )
        for label, e in m["per_label"].items():
            table.add_row(
                label,
                str(e["n"]),
                _pct(e["prevalence"]),
                _auroc_cell(e),
                _f(e["auprc"]),
                _f(e.get("sensitivity")),
                _f(e.get("specificity")),
                _f(e.get("threshold")),
            )
        table.add_section()
        macro, micro = m["macro"], m["micro"]
        table.add_row(
            "macro",
            "",
            "",
            _auroc_cell(macro),
            _f(macro["auprc"]),
            _f(macro["sensitivity"]),
            _f(macro["specificity"]),
            "",
        )
        table.add_row(
            "micro",
            str(micro["n"]),
            "",
            _auroc_cell(micro),
            _f(micro["auprc"]),
            _f(micro.get("sensitivity")),
            _f(micro.get("specificity")),
            "",
        )
        console.print(table)
        console.print(
            f"calibration: ECE {_f(result['calibration']['ece_pooled'])} ({result['calibration']['bins']} bins)"
        )
        if result.get("subgroups"):
            sub = Table("subgroup", "value", "n", "macro AUROC", title="subgroups")
            for grouping, groups in result["subgroups"].items():
                for value, entry in groups.items():
                    sub.add_row(grouping, value, str(entry["n"]), _f(entry["macro_auroc"]))
            console.print(sub)
    for warning in result.get("warnings", []):
        console.print(f"[yellow]note:[/] {warning}", highlight=False)
    if result.get("plots"):
        console.print(f"figures: {', '.join(result['plots'])}")
