"""Stage entry points of a workspace pipeline: what ``radflow stage NAME`` runs inside ``dvc.yaml``.

Each stage reads ``params.yaml`` (validated by :func:`radflow.config.load_params`) and calls the
library function behind the matching user command, writing only the outputs ``dvc.yaml`` declares
for it. Stages run with the workspace root as working directory (DVC's doing), and the MLflow
store is the workspace's ``mlflow.db`` unless ``MLFLOW_TRACKING_URI`` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radflow.config import Params, load_params
from radflow.errors import ConfigError, NotFoundError
from radflow.pipeline import dvc_yaml as paths

__all__ = ["STAGE_FUNCTIONS", "can_resume", "run_stage", "train_fingerprint"]

SALT_FILE = ".radflow-salt"
FINGERPRINT_FILE = "fingerprint.json"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _read_json(path: Path, made_by: str) -> dict[str, Any]:
    if not path.is_file():
        raise NotFoundError(f"{path} is missing; the {made_by} stage writes it (run `radflow run`).")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _synth(root: Path, params: Params) -> dict[str, Any]:
    from radflow.data.synth import synth_chest

    cfg = params.data.synth
    out = root / paths.raw_path(params)
    shutil.rmtree(out, ignore_errors=True)
    if cfg.kind == "spine":
        from radflow.data.synth.spine import synth_spine

        return synth_spine(out, cfg.n, cfg.seed, cfg.size)
    if cfg.kind == "hand":
        from radflow.data.synth import synth_hand

        return synth_hand(out, cfg.n, cfg.seed, cfg.size, masks=cfg.masks)
    return synth_chest(out, cfg.n, cfg.seed, cfg.size, cfg.dicom_fraction, masks=cfg.masks, boxes=cfg.boxes)


def _crops(root: Path, params: Params) -> dict[str, Any]:
    from radflow.workflow.crops import build_crops

    cfg = params.data.crops
    out = root / paths.DATASET
    shutil.rmtree(out, ignore_errors=True)
    keep = cfg.keep
    return build_crops(
        root / cfg.dataset, out, root / cfg.table, cfg.label, keep=keep, margin=cfg.margin, size=params.data.size,
        box_label=cfg.box_label, masks=None if cfg.masks is None else root / cfg.masks, structure=cfg.structure,
        task=cfg.task, sex_field=cfg.sex_field,
    )  # fmt: skip


def _workflow(root: Path, params: Params) -> dict[str, Any]:
    from radflow.pipeline.workflow import run_workflow_stage

    return run_workflow_stage(root, params)


def _ingest(root: Path, params: Params) -> dict[str, Any]:
    from radflow.data.ingest import IngestOptions, ingest

    data = params.data
    options = IngestOptions(
        size=data.size,
        uncertain=data.uncertain,
        labels=data.labels,
        frontal_only=data.frontal_only,
        labels_csv=root / data.labels_csv if data.labels_csv else None,
        # The pseudonymisation key stays in the workspace, out of git and out of the DVC cache.
        salt_file=root / SALT_FILE,
        extra=tuple(root / folder for folder in data.extra),
    )
    return ingest(root / paths.raw_path(params), data.format, root / paths.DATASET, options)


def _split(root: Path, params: Params) -> dict[str, Any]:
    from radflow.data.split import split_dataset

    src, dst = root / paths.DATASET, root / paths.SPLIT_DATASET
    shutil.rmtree(dst, ignore_errors=True)

    def link_or_copy(a: str, b: str) -> object:
        # Pixel shards are only read by split, so a hard link saves a copy; the manifest and
        # dataset.json are rewritten (by rename, but copy them anyway so the cache is never touched).
        if Path(a).suffix not in (".json", ".parquet"):
            try:
                os.link(a, b)
                return b
            except OSError:
                pass
        return shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)
    s = params.split
    return split_dataset(dst, val=s.val, test=s.test, seed=s.seed)


def train_fingerprint(params: Params, dataset_version: str) -> str:
    """What a checkpoint in ``models/checkpoints`` was trained for: train params + dataset version.

    A ``last.pt`` is resumed only when this matches, so a changed param always starts afresh.
    """
    blob = json.dumps({"train": params.train.model_dump(mode="json"), "dataset": dataset_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def can_resume(checkpoints: Path, fingerprint: str) -> bool:
    """Whether ``checkpoints`` holds a ``last.pt`` of a training with this fingerprint (an interrupted run)."""
    stamp = checkpoints / FINGERPRINT_FILE
    try:
        recorded = json.loads(stamp.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(recorded == fingerprint and (checkpoints / "last.pt").is_file())


def _train(root: Path, params: Params) -> dict[str, Any]:
    from radflow.data.dataset import Dataset
    from radflow.train.loop import train

    dataset = root / paths.SPLIT_DATASET
    out = root / paths.CHECKPOINTS
    fingerprint = train_fingerprint(params, Dataset.open(dataset).version)
    resume = can_resume(out, fingerprint)
    if not resume:
        shutil.rmtree(out, ignore_errors=True)
        _write_json(out / FINGERPRINT_FILE, {"fingerprint": fingerprint})
    # The evaluate stage runs the evaluation (and logs it), so training skips its own.
    result = train(dataset, params, out_dir=out, resume=resume)
    summary = {
        "run_id": result.run_id,
        "monitor": result.monitor,
        "best_metric": result.best_metric,
        "epochs_run": result.epochs_run,
        "resumed": resume,
        "final": result.history[-1] if result.history else {},
    }
    _write_json(root / paths.TRAIN_METRICS, summary)
    return summary


def _roc_points(checkpoint: Path, dataset: Path) -> list[dict[str, Any]]:
    """ROC curve points per label on the test split, the data behind ``dvc plots show``."""
    import numpy as np
    from sklearn.metrics import roc_curve

    from radflow.data.dataset import Dataset
    from radflow.train.checkpoint import load_model
    from radflow.train.predict import predict_dataset

    model, meta = load_model(checkpoint)
    ds = Dataset.open(dataset)
    if ds.task not in ("multilabel", "multiclass"):  # no ROC for a value or a mask
        return []
    rows = ds.indices("test")
    scores = predict_dataset(model, meta, ds, "test")
    targets = ds.targets(rows)
    points: list[dict[str, Any]] = []
    for j, label in enumerate(meta.labels):
        if ds.task == "multiclass":
            y = (targets[:, 0] == j).astype(float) if targets.shape[1] == 1 else targets[:, j]
        else:
            y = targets[:, j]
        known = ~np.isnan(y)
        if len(np.unique(y[known])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[known], scores[known, j])
        points += [
            {"label": label, "fpr": round(float(f), 5), "tpr": round(float(t), 5)}
            for f, t in zip(fpr, tpr, strict=True)
        ]
    return points


def _evaluate(root: Path, params: Params) -> dict[str, Any]:
    from radflow.data.dataset import Dataset
    from radflow.data.split import held_out_version
    from radflow.evaluate.report import evaluate_and_log
    from radflow.registry import EVAL_HELD_OUT_TAG
    from radflow.tracking import client, resolve_tracking_uri

    run_id = _read_json(root / paths.TRAIN_METRICS, "train")["run_id"]
    dataset = root / paths.SPLIT_DATASET
    model = root / paths.MODEL
    model.parent.mkdir(parents=True, exist_ok=True)
    model.unlink(missing_ok=True)
    # Evaluation writes the chosen thresholds into the checkpoint; work on a copy so train's output
    # (a DVC dependency of this stage) never changes under DVC's feet.
    shutil.copyfile(root / paths.CHECKPOINTS / "best.pt", model)
    result = evaluate_and_log(
        run_id, model, dataset, params.evaluate, None, gates=params.gates, model_card=params.model_card
    )
    # Names the test set itself, so the register gate compares with a champion trained on less data.
    held_out = held_out_version(Dataset.open(dataset))
    client(resolve_tracking_uri()).set_tag(run_id, EVAL_HELD_OUT_TAG, held_out)
    # The report and figures were just logged to the run; fetch them rather than evaluate twice.
    out = root / paths.EVAL_DIR
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="radflow-eval-") as tmp:
        fetched = client(resolve_tracking_uri()).download_artifacts(run_id, "evaluation", tmp)
        shutil.copytree(fetched, out)
    headline = {k: v for k, v in result["headline"].items() if v is not None}
    _write_json(
        root / paths.METRICS,
        {**headline, "dataset_version": result["dataset"]["version"], "held_out_version": held_out},
    )
    _write_json(root / paths.ROC, {"roc": _roc_points(model, dataset)})
    return result


def _export(root: Path, params: Params) -> dict[str, Any]:
    from radflow.export.pipeline import export_model

    run_id = _read_json(root / paths.TRAIN_METRICS, "train")["run_id"]
    out = root / paths.EXPORT_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = params.export
    # From the run (not the local file) so the ONNX files are logged to it and the registry version has them.
    return export_model(
        f"runs:/{run_id}",
        root / paths.ONNX,
        dataset=root / paths.SPLIT_DATASET,
        int8=cfg.int8,
        triton_repo=out / "triton" if cfg.triton else None,
        triton_name=params.registry.name if cfg.triton else None,
        opset=cfg.opset,
        dice_tolerance=cfg.max_int8_dice_drop,
        map_tolerance=cfg.max_int8_map_drop,
        name=params.registry.name,
    )


def _register(root: Path, params: Params) -> dict[str, Any]:
    from radflow.evaluate.report import log_gated_report
    from radflow.pipeline.lineage import record_lineage
    from radflow.registry import register, registration_summary

    run_id = _read_json(root / paths.TRAIN_METRICS, "train")["run_id"]
    result = register(run_id, params.registry.name, params.gates)
    # The logged report.html now shows the gates' verdicts instead of their preview.
    log_gated_report(run_id, result, gates=params.gates)
    lineage = record_lineage(root, params, result["name"], result["version"], run_id)
    summary = {**registration_summary(result, run_id), "lineage": lineage}
    _write_json(root / paths.REGISTRATION, summary)
    return summary


STAGE_FUNCTIONS: dict[str, Callable[[Path, Params], dict[str, Any]]] = {
    "synth": _synth,
    "ingest": _ingest,
    "crops": _crops,
    "split": _split,
    "train": _train,
    "evaluate": _evaluate,
    "export": _export,
    "register": _register,
    "workflow": _workflow,
}


def run_stage(name: str, root: Path | None = None) -> dict[str, Any]:
    """Run pipeline stage ``name`` in workspace ``root`` (default: the current directory)."""
    from radflow.errors import did_you_mean

    if name not in STAGE_FUNCTIONS:
        raise ConfigError(
            f"unknown stage {name!r}.{did_you_mean(name, STAGE_FUNCTIONS)} Stages: {', '.join(STAGE_FUNCTIONS)}."
        )
    root = Path(root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    return STAGE_FUNCTIONS[name](root, params)
