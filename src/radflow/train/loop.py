"""The training loop: dataset in, tracked MLflow run with best checkpoint, model and evaluation out.

One function, :func:`train`, does what ``radflow train`` does: checks inputs before any work
(architecture, split, labels, tracking server), trains with the CheXNet recipe (Adam(W),
reduce-on-plateau, early stopping on the validation metric), checkpoints every epoch so
``resume=True`` continues where a run stopped, logs everything to MLflow and finally hands the best
checkpoint to the evaluation report.
"""

from __future__ import annotations

import math
import os
import platform
import time
import warnings as pywarnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from radflow.config import Params, TrainConfig, flatten_params
from radflow.data.dataset import Dataset
from radflow.errors import ConfigError, DataError, NotFoundError, RadflowError
from radflow.tracking import check_tracking, ensure_experiment, git_state, resolve_tracking_uri
from radflow.train.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from radflow.train.data import ShardBatches, augment, make_loader
from radflow.train.losses import make_loss
from radflow.train.models import create_model, load_weights
from radflow.train.predict import extra_inputs, predict_loader

__all__ = ["TrainResult", "monitored_metric", "resolve_device", "train", "val_metrics"]

_console = Console(stderr=True)


@dataclass
class TrainResult:
    """What a training run produced."""

    run_id: str
    checkpoint_path: Path
    best_metric: float | None
    epochs_run: int
    history: list[dict[str, float]]
    monitor: str = ""
    model_uri: str | None = None
    tracking_uri: str = ""
    evaluation: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "checkpoint_path": str(self.checkpoint_path),
            "best_metric": self.best_metric,
            "monitor": self.monitor,
            "epochs_run": self.epochs_run,
            "history": self.history,
            "model_uri": self.model_uri,
            "tracking_uri": self.tracking_uri,
            "evaluation": self.evaluation,
            "warnings": self.warnings,
        }


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU; an unavailable CUDA request is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA GPU is available; use auto or cpu.")
    return device


def monitored_metric(task: str) -> tuple[str, Literal["min", "max"]]:
    """(metric name, 'max'|'min') that early stopping and the plateau schedule watch for ``task``."""
    table: dict[str, tuple[str, Literal["min", "max"]]] = {
        "multilabel": ("val_macro_auroc", "max"),
        "multiclass": ("val_accuracy", "max"),
        "regression": ("val_mae", "min"),
    }
    return table[task]


def val_metrics(task: str, labels: list[str], preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Validation metrics: macro/per-label AUROC (multi-label), accuracy (multi-class), MAE (regression).

    ``targets`` are in user units (0/1/NaN, one-hot, or months); AUROC is skipped for labels whose
    known validation values hold only one class.
    """
    from sklearn.metrics import roc_auc_score

    from radflow.evaluate.report import metric_key  # val_ and test_ metric names spell labels alike

    out: dict[str, float] = {}
    if task == "regression":
        known = ~np.isnan(targets[:, 0])
        out["val_mae"] = float(np.abs(preds[known, 0] - targets[known, 0]).mean()) if known.any() else math.nan
        return out
    if task == "multiclass":
        known = ~np.isnan(targets).any(axis=1)
        truth = targets[known].argmax(1)
        out["val_accuracy"] = float((preds[known].argmax(1) == truth).mean()) if known.any() else math.nan
    aurocs = []
    for j, label in enumerate(labels):
        known = ~np.isnan(targets[:, j])
        y = targets[known, j]
        if len(np.unique(y)) == 2:
            auc = float(roc_auc_score(y, preds[known, j]))
            aurocs.append(auc)
            out[f"val_auroc_{metric_key(label)}"] = auc
    out["val_macro_auroc"] = float(np.mean(aurocs)) if aurocs else math.nan
    return out


@dataclass
class _Prepared:
    ds: Dataset
    meta: ModelMeta
    train_data: ShardBatches
    val_data: ShardBatches
    val_targets: np.ndarray
    pos_weight: torch.Tensor | None
    warnings: list[str]


def _prepare(dataset_path: Path, cfg: TrainConfig) -> _Prepared:
    """Open and check the dataset; build targets, extra inputs and the model meta. No side effects."""
    ds = Dataset.open(dataset_path)
    if not ds.labels:
        raise DataError("the dataset has no label columns; ingest it with a label file.", path=dataset_path)
    if ds.task not in ("multilabel", "multiclass", "regression"):
        raise DataError(f"unknown task {ds.task!r} in dataset.json.", path=dataset_path)
    if not ds.is_split:
        raise DataError(
            f"the dataset is not split into train/val/test yet; run `radflow split {dataset_path}` first.",
            path=dataset_path,
        )
    train_rows, val_rows = ds.indices("train"), ds.indices("val")
    for name, rows in (("train", train_rows), ("val", val_rows)):
        if len(rows) == 0:
            raise DataError(f"the {name} split is empty; re-split with `radflow split` and a larger fraction.")
    targets = ds.targets()
    warnings: list[str] = []
    known_train = ~np.isnan(targets[train_rows])
    if not known_train.any():
        raise DataError(
            "labels are missing: every label of the train split is unknown (NaN); check the label file and "
            "the --uncertain policy used at ingest.",
            path=dataset_path,
        )
    for j, label in enumerate(ds.labels):
        if not known_train[:, j].any():
            warnings.append(f"label {label!r} has no known value in the train split; it cannot be learnt.")
        elif ds.task != "regression" and not (targets[train_rows, j] == 1).any():
            warnings.append(f"label {label!r} has no positive in the train split.")
    if ds.task == "multiclass" and len(ds.labels) < 2:
        raise DataError("a multiclass dataset needs at least two classes.", path=dataset_path)

    meta = ModelMeta(
        arch=cfg.arch,
        task=ds.task,
        labels=ds.labels,
        num_outputs=1 if ds.task == "regression" else len(ds.labels),
        in_chans=cfg.in_chans,
        extra_inputs=["sex"] if ds.task == "regression" else [],
        preprocess={**ds.spec.to_dict(), "channels": cfg.in_chans},
        dataset_version=ds.version,
        dataset_path=str(Path(dataset_path).resolve()),
        target_unit="months" if ds.task == "regression" else None,
        model_kwargs={"dropout": cfg.dropout} if cfg.dropout else {},
    )
    train_targets, val_targets_raw = targets[train_rows], targets[val_rows]
    if ds.task == "regression":
        known = train_targets[~np.isnan(train_targets)]
        meta.target_mean = float(known.mean())
        meta.target_std = float(known.std()) or 1.0
        train_targets = (train_targets - meta.target_mean) / meta.target_std
    pos_weight = None
    if cfg.pos_weight and ds.task == "multilabel":
        positives = np.nansum(targets[train_rows] == 1, axis=0)
        known_n = known_train.sum(axis=0)
        pos_weight = torch.tensor((known_n - positives) / np.maximum(positives, 1), dtype=torch.float32).clamp(min=1.0)
    spec = ds.spec.__class__.from_dict(meta.preprocess)
    train_data = ShardBatches(ds, train_rows, spec, train_targets, extra_inputs(ds, train_rows, meta))
    val_norm = val_targets_raw
    if ds.task == "regression":
        val_norm = (val_targets_raw - meta.target_mean) / meta.target_std
    val_data = ShardBatches(ds, val_rows, spec, val_norm, extra_inputs(ds, val_rows, meta))
    return _Prepared(ds, meta, train_data, val_data, val_targets_raw, pos_weight, warnings)


def _make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, mode: Literal["min", "max"]
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _improved(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def _nan_error(value: float, where: str, optimizer: torch.optim.Optimizer, last: Path, epoch: int) -> RadflowError:
    good = f"{last} (epoch {epoch - 1})" if last.is_file() and epoch > 1 else "none (failed in the first epoch)"
    return RadflowError(
        f"the loss became {value} at {where} (lr {optimizer.param_groups[0]['lr']:g}); training stopped. "
        f"Last good checkpoint: {good}. Lower train.lr or check the labels for extreme values, then train again "
        "(--resume continues from the last good checkpoint)."
    )


def _log_model(model: torch.nn.Module, meta: ModelMeta, name: str = "model") -> str:
    """Log the MLflow pytorch model with a tensor signature and label/preprocess metadata; returns its URI."""
    import mlflow.pytorch
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = int(meta.preprocess["size"])
    image_shape = (-1, meta.in_chans, size, size)
    if meta.extra_inputs:
        inputs = [
            TensorSpec(np.dtype(np.float32), image_shape, "image"),
            TensorSpec(np.dtype(np.float32), (-1, len(meta.extra_inputs)), "extra"),
        ]
    else:
        # Unnamed, so pyfunc's predict takes a plain array rather than a dict.
        inputs = [TensorSpec(np.dtype(np.float32), image_shape)]
    signature = ModelSignature(
        inputs=Schema(inputs),  # type: ignore[arg-type]
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, meta.num_outputs))]),
    )
    # A batch of two keeps the batch dimension dynamic in the exported graph.
    example: tuple[np.ndarray, ...] = (np.zeros((2, meta.in_chans, size, size), np.float32),)
    if meta.extra_inputs:
        example += (np.zeros((2, len(meta.extra_inputs)), np.float32),)
    info = mlflow.pytorch.log_model(
        model,
        name=name,
        signature=signature,
        metadata={
            "labels": meta.labels,
            "task": meta.task,
            "preprocess": meta.preprocess,
            "extra_inputs": meta.extra_inputs,
            "target_unit": meta.target_unit,
            "dataset_version": meta.dataset_version,
        },
        # Explicit requirements: inferring them imports the model in a subprocess (slow, and may hit the network).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        # pt2 (torch.export) stores the traced graph, so loading it needs neither radflow nor pickle.
        serialization_format="pt2",
        input_example=example,
    )
    return str(info.model_uri)


def train(
    dataset_path: Path,
    params: Params,
    tracking_uri: str | None = None,
    experiment: str = "radflow",
    resume: bool = False,
    out_dir: Path | None = None,
    *,
    progress: bool = True,
    evaluate: bool = True,
) -> TrainResult:
    """Train ``params.train.arch`` on ``dataset_path`` and track the run; see the module docstring.

    Checkpoints go to ``out_dir`` (default ``./checkpoints``): ``last.pt`` every epoch, ``best.pt``
    when the validation metric improves. ``resume`` continues from ``last.pt`` (same MLflow run).
    """
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    threads = torch.get_num_threads()
    # Thread count is process-wide; give the caller's back when training ends.
    torch.set_num_threads(params.train.threads or max(1, os.cpu_count() or 1))
    try:
        return _train(dataset_path, params, tracking_uri, experiment, resume, out_dir, progress, evaluate)
    finally:
        torch.set_num_threads(threads)
        _forget_tracking_env(env_before)


def _forget_tracking_env(before: str | None) -> None:
    """Undo what ``mlflow.set_tracking_uri`` wrote into the environment, which later subprocesses would inherit."""
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _train(
    dataset_path: Path,
    params: Params,
    tracking_uri: str | None,
    experiment: str,
    resume: bool,
    out_dir: Path | None,
    progress: bool,
    evaluate: bool,
) -> TrainResult:
    cfg = params.train
    dataset_path = Path(dataset_path)
    out_dir = Path(out_dir) if out_dir is not None else Path.cwd() / "checkpoints"
    # Every check a user can fail runs before the first expensive step.
    create_model(cfg.arch, 1)  # unknown architecture -> did-you-mean, before touching data
    prep = _prepare(dataset_path, cfg)
    meta, ds = prep.meta, prep.ds
    loss_fn = make_loss(cfg.loss, ds.task, prep.pos_weight)
    device = resolve_device(cfg.device)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    resume_state: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise NotFoundError(f"nothing to resume: {last_path} does not exist; train without --resume first.")
        resume_state = load_checkpoint(last_path)
        old = ModelMeta.from_dict(resume_state["meta"])
        if old.dataset_version != ds.version:
            raise ConfigError(
                f"{last_path} was trained on dataset version {old.dataset_version}, this dataset is {ds.version}; "
                "resume only on the same data, or train without --resume."
            )
        if old.arch != cfg.arch:
            raise ConfigError(f"{last_path} holds a {old.arch} but train.arch is {cfg.arch}; use --arch {old.arch}.")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = create_model(cfg.arch, meta.num_outputs, cfg.in_chans, len(meta.extra_inputs), **meta.model_kwargs)
    warnings = list(prep.warnings)
    if cfg.weights and resume_state is None:
        report = load_weights(model, cfg.weights)
        for kind in ("missing", "unexpected", "mismatched"):
            if report[kind]:
                warnings.append(f"--weights {cfg.weights}: {len(report[kind])} {kind} key(s): {report[kind][:5]}")
    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if cfg.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    monitor, mode = monitored_metric(ds.task)
    if ds.task == "multilabel" and not any(len(np.unique(c[~np.isnan(c)])) == 2 for c in prep.val_targets.T):
        monitor, mode = "val_loss", "min"
        warnings.append("no label has both classes in the val split; early stopping watches val_loss instead.")
    scheduler = _make_scheduler(cfg, optimizer, mode)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, bad_epochs, history = 0, None, 0, []
    run_id: str | None = None
    if resume_state is not None:
        model.load_state_dict(resume_state["model_state"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if scheduler is not None and resume_state.get("scheduler"):
            scheduler.load_state_dict(resume_state["scheduler"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        _set_rng_state(resume_state["rng"])
        start_epoch = int(resume_state["epoch"])
        best, bad_epochs = resume_state.get("best"), int(resume_state.get("bad_epochs", 0))
        history = list(resume_state.get("history", []))
        run_id = resume_state.get("run_id")
        if resume_state.get("stopped_early"):
            start_epoch = cfg.epochs

    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(uri, experiment)
    try:
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=None if run_id else f"{cfg.arch}-{ds.version[:8]}",
        )
    except Exception as exc:
        raise RadflowError(f"could not open MLflow run {run_id or '(new)'} at {uri}: {exc}") from None
    run_id = run.info.run_id
    meta.run_id = run_id
    try:
        if resume_state is None:
            mlflow.log_params(flatten_params(params))
            commit, dirty = git_state()
            mlflow.set_tags(
                {
                    "radflow.dataset_version": ds.version,
                    "radflow.dataset_path": meta.dataset_path,
                    "radflow.git_commit": commit,
                    "radflow.git_dirty": str(dirty).lower(),
                    "radflow.task": ds.task,
                    "radflow.arch": cfg.arch,
                    "radflow.torch_version": torch.__version__,
                    "radflow.device": str(device),
                    "radflow.cuda": torch.version.cuda or "none",
                    "radflow.python": platform.python_version(),
                    "radflow.monitor": monitor,
                }
            )
            with pywarnings.catch_warnings():
                # MLflow's notes on ambiguous local sources and integer columns do not apply to a manifest.
                pywarnings.simplefilter("ignore", UserWarning)
                dataset = from_pandas(
                    ds.manifest, source=meta.dataset_path, name=Path(meta.dataset_path).name, digest=ds.version
                )
                mlflow.log_input(dataset, context="training")
        else:
            mlflow.set_tag("radflow.resumed_at_epoch", str(start_epoch))

        sampler_gen, aug_gen = torch.Generator(), torch.Generator()
        drop_last = len(prep.train_data) > cfg.batch_size  # a batch of one breaks BatchNorm
        train_loader = make_loader(
            prep.train_data,
            cfg.batch_size,
            shuffle=True,
            num_workers=cfg.num_workers,
            generator=sampler_gen,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
        )
        val_loader = make_loader(prep.val_data, max(cfg.batch_size, 64), shuffle=False)
        steps_per_epoch = len(train_loader) if cfg.max_steps is None else min(len(train_loader), cfg.max_steps)
        epoch = start_epoch
        with Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[metric]}"),
            TimeElapsedColumn(),
            console=_console,
            disable=not progress,
            transient=False,
        ) as bar:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                # Per-epoch seeds make a resumed run see the same batches as an uninterrupted one.
                sampler_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
                aug_gen.manual_seed(cfg.seed * 2_000_003 + epoch)
                task_id = bar.add_task("", total=steps_per_epoch, epoch=f"{epoch}/{cfg.epochs}", loss=0.0, metric="")
                model.train()
                started, seen, loss_sum = time.perf_counter(), 0, 0.0
                for step, (x, y, extra) in enumerate(train_loader):
                    if step >= steps_per_epoch:
                        break
                    x = x.to(device, non_blocking=True).to(memory_format=memory_format)
                    y = y.to(device, non_blocking=True)
                    x = augment(x, cfg.augment, aug_gen)
                    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                        out = model(x, extra.to(device) if extra.shape[1] else None)
                    loss = loss_fn(out.float(), y)
                    value = float(loss.item())
                    if not math.isfinite(value):
                        raise _nan_error(value, f"epoch {epoch}, step {step + 1}", optimizer, last_path, epoch)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    seen += len(x)
                    loss_sum += value * len(x)
                    bar.update(task_id, advance=1, loss=loss_sum / seen)
                train_time = time.perf_counter() - started
                raw, preds = predict_loader(model, meta, val_loader, device)
                val_loss = float(loss_fn(torch.from_numpy(raw), torch.from_numpy(prep.val_data.targets)))
                if not math.isfinite(val_loss):
                    raise _nan_error(val_loss, f"validation after epoch {epoch}", optimizer, last_path, epoch)
                metrics = {
                    "train_loss": loss_sum / max(seen, 1),
                    "val_loss": val_loss,
                    **val_metrics(ds.task, ds.labels, preds, prep.val_targets),
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_images_per_s": seen / max(train_time, 1e-9),
                }
                score = metrics[monitor]
                bar.update(task_id, metric=f"{monitor} {score:.4f}")
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    if math.isfinite(score):
                        scheduler.step(score)
                elif scheduler is not None:
                    scheduler.step()
                improved = _improved(score, best, mode)
                if improved:
                    best, bad_epochs = score, 0
                else:
                    bad_epochs += 1
                stop = cfg.early_stopping_patience > 0 and bad_epochs >= cfg.early_stopping_patience
                history.append({"epoch": epoch, **metrics})
                mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=epoch)
                meta.epoch = epoch
                if improved:
                    save_checkpoint(best_path, model, meta, best=best)
                save_checkpoint(
                    last_path,
                    model,
                    meta,
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict() if scheduler is not None else None,
                    scaler=scaler.state_dict(),
                    epoch=epoch,
                    best=best,
                    bad_epochs=bad_epochs,
                    history=history,
                    rng=_rng_state(),
                    run_id=run_id,
                    stopped_early=stop,
                )
                if stop:
                    _console.print(f"early stopping: {monitor} did not improve for {bad_epochs} epoch(s)")
                    break
        if not best_path.is_file():
            raise RadflowError(f"no best checkpoint in {out_dir}; training ran no epoch (train.epochs={cfg.epochs}).")
        mlflow.log_metric(f"best_{monitor}", best if best is not None else math.nan)
        mlflow.log_artifact(str(best_path), artifact_path="checkpoint")
        mlflow.log_text(params.to_yaml(), "config/params.yaml")
        from radflow.train.checkpoint import load_model

        best_model, best_meta = load_model(best_path)
        model_uri = _log_model(best_model, best_meta)
        mlflow.set_tag("radflow.model_uri", model_uri)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()

    evaluation = None
    if evaluate:
        from radflow.evaluate.report import evaluate_and_log

        evaluation = evaluate_and_log(
            run_id=run_id, checkpoint=best_path, dataset=dataset_path, params=params.evaluate, tracking_uri=uri
        )
    return TrainResult(
        run_id=run_id,
        checkpoint_path=best_path,
        best_metric=best,
        epochs_run=len(history),
        history=history,
        monitor=monitor,
        model_uri=model_uri,
        tracking_uri=uri,
        evaluation=evaluation,
        warnings=warnings,
    )
