"""The training loop: dataset in, tracked MLflow run with best checkpoint and logged model out.

One function, :func:`train`, trains as ``radflow train`` does: checks inputs before any work
(architecture, split, labels, tracking server), trains with the CheXNet recipe (Adam(W),
reduce-on-plateau, early stopping on the validation metric), checkpoints every epoch so
``resume=True`` continues where a run stopped, and logs everything to MLflow. What differs between
tasks (targets, loss, activation, validation metrics) comes from the run's task kind
(:mod:`radflow.tasks`); a dense kind (segmentation) trains a dense network on masks, augmented
jointly with their images, and validation runs batch by batch through the kind's ``val_batch``.
The test-split evaluation that ``radflow train`` ends with is
:func:`radflow.evaluate.report.evaluate_training`: evaluation depends on training, not the reverse.

The steps of one run, in order: :func:`_prepare` (dataset, targets, model meta), :func:`_resume_state`,
:func:`_setup` (model, optimiser, schedule, AMP scaler), :func:`_restore`, :func:`_open_run` and
:func:`_log_run_start`, :class:`_Epochs` (train, validate, early-stop, checkpoint, log per epoch)
and :func:`_log_outcome` (best checkpoint and MLflow model).
"""

from __future__ import annotations

import math
import os
import platform
import time
import warnings as pywarnings
from collections.abc import Callable
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
from radflow.hardware import available_cores
from radflow.tasks import TaskKind, get_task
from radflow.tracking import check_tracking, ensure_experiment, env_scope, git_state, resolve_tracking_uri
from radflow.train.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from radflow.train.data import ShardBatches, augment, box_targets, make_loader
from radflow.train.distributed import SINGLE, Group, check_workers, run_ranks
from radflow.train.losses import LossFn, make_loss
from radflow.train.models import create_model, list_models, load_weights, model_network
from radflow.train.predict import extra_inputs, outputs_to_predictions

__all__ = ["EpochCallback", "TrainResult", "fit_arch", "resolve_device", "train"]

EpochCallback = Callable[[int, dict[str, float]], None]
"""``on_epoch(epoch, metrics)``: the epoch's logged metrics (``train_loss``, the monitored val metric, ``lr``...)."""

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
    resumed_from_epoch: int | None = None  # the last epoch of the checkpoint a --resume continued from

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
            "resumed_from_epoch": self.resumed_from_epoch,
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


@dataclass
class _Prepared:
    ds: Dataset
    kind: TaskKind
    meta: ModelMeta
    train_data: ShardBatches
    val_data: ShardBatches
    val_targets: np.ndarray
    pos_weight: torch.Tensor | None
    warnings: list[str]


def fit_arch(arch: str, kind: TaskKind) -> str:
    """The architecture a run of ``kind`` trains for ``train.arch`` = ``arch``.

    A network that does not fit the kind (a classifier for segmentation) is an error naming those
    that do, unless ``arch`` is the config's default and the kind brings its own
    (:attr:`TaskKind.default_arch`): ``radflow train`` on a segmentation dataset trains ``small_unet``.
    """
    network = model_network(arch)
    if network == kind.network:
        return arch
    if kind.default_arch is not None and arch == TrainConfig.model_fields["arch"].default:
        return kind.default_arch
    raise ConfigError(
        f"train.arch {arch!r} is a {network} network, but a {kind.name} dataset needs a {kind.network} one: "
        f"use --arch {' or '.join(list_models(kind.network))}."
    )


def _prepare(dataset_path: Path, cfg: TrainConfig) -> _Prepared:
    """Open and check the dataset; build targets, extra inputs and the model meta. No side effects."""
    ds = Dataset.open(dataset_path)
    if not ds.labels:
        raise DataError("the dataset has no label columns; ingest it with a label file.", path=dataset_path)
    try:
        kind = get_task(ds.task)
    except ConfigError as exc:
        raise DataError(f"{exc} (the task of dataset.json)", path=dataset_path) from None
    dense, detection = kind.network == "dense", kind.network == "detection"
    if dense and not ds.has_masks:
        raise DataError(f"a {ds.task} dataset needs masks, and this one has none; re-ingest it.", path=dataset_path)
    if detection and not ds.has_boxes:
        raise DataError(f"a {ds.task} dataset needs boxes, and this one has none; re-ingest it.", path=dataset_path)
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
    known_train = ~np.isnan(targets[train_rows])
    if not known_train.any():
        raise DataError(
            "labels are missing: every label of the train split is unknown (NaN); check the label file and "
            "the --uncertain policy used at ingest.",
            path=dataset_path,
        )
    warnings = [
        f"label {label!r} has no known value in the train split; it cannot be learnt."
        for j, label in enumerate(ds.labels)
        if not known_train[:, j].any()
    ]
    try:
        warnings += kind.check_labels(ds.labels, targets[train_rows])
    except DataError as exc:
        raise DataError(str(exc), path=dataset_path) from None

    arch = fit_arch(cfg.arch, kind)
    if arch != cfg.arch:
        warnings.append(f"train.arch {cfg.arch} (the default) does not fit a {ds.task} dataset; training {arch}.")
    meta = ModelMeta(
        arch=arch,
        task=ds.task,
        labels=ds.labels,
        num_outputs=kind.num_outputs(ds.labels),
        in_chans=cfg.in_chans,
        extra_inputs=list(kind.extra_inputs),
        preprocess={**ds.spec.to_dict(), "channels": cfg.in_chans},
        dataset_version=ds.version,
        dataset_path=str(Path(dataset_path).resolve()),
        target_unit=kind.target_unit,
        model_kwargs={"dropout": cfg.dropout} if cfg.dropout else {},
    )
    train_targets, val_targets_raw = targets[train_rows], targets[val_rows]
    val_norm = val_targets_raw
    if kind.normalise_targets:
        known = train_targets[~np.isnan(train_targets)]
        meta.target_mean = float(known.mean())
        meta.target_std = float(known.std()) or 1.0
        train_targets = (train_targets - meta.target_mean) / meta.target_std
        val_norm = (val_targets_raw - meta.target_mean) / meta.target_std
    weights = kind.pos_weight(targets[train_rows]) if cfg.pos_weight else None
    pos_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    spec = ds.spec.__class__.from_dict(meta.preprocess)
    train_boxes, val_boxes = (box_targets(ds, rows) if detection else None for rows in (train_rows, val_rows))
    train_data = ShardBatches(
        ds, train_rows, spec, train_targets, extra_inputs(ds, train_rows, meta), masks=dense, boxes=train_boxes
    )
    val_data = ShardBatches(
        ds, val_rows, spec, val_norm, extra_inputs(ds, val_rows, meta), masks=dense, boxes=val_boxes
    )
    return _Prepared(ds, kind, meta, train_data, val_data, val_targets_raw, pos_weight, warnings)


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
    network = model_network(meta.arch)
    output_shape: tuple[int, ...] = (-1, meta.num_outputs)
    if network == "dense":
        output_shape = (-1, meta.num_outputs, size, size)
    elif network == "detection":  # per anchor: box, class logits, centre-ness logit
        output_shape = (-1, -1, 4 + meta.num_outputs + 1)
    signature = ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([TensorSpec(np.dtype(np.float32), output_shape)]),
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
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train ``params.train.arch`` on ``dataset_path`` and track the run; see the module docstring.

    Checkpoints go to ``out_dir`` (default ``./checkpoints``): ``last.pt`` every epoch, ``best.pt``
    when the validation metric improves. ``resume`` continues from ``last.pt`` (same MLflow run).
    With ``train.workers`` > 1 the run is data-parallel (:func:`_launch`, :mod:`radflow.train.distributed`).
    ``on_epoch(epoch, metrics)`` is called after each epoch is logged and checkpointed (single process only);
    an exception it raises ends the run (``KILLED`` for ``SystemExit``/``KeyboardInterrupt``, else ``FAILED``).
    """
    threads = torch.get_num_threads()
    # Thread count is process-wide; give the caller's back when training ends.
    torch.set_num_threads(params.train.threads or available_cores())
    # Undo what ``mlflow.set_tracking_uri`` writes into the environment, which later subprocesses would inherit.
    # (The fluent setting stays on the run's store: ``radflow train`` evaluates the logged model through it.)
    try:
        with env_scope(MLFLOW_TRACKING_URI=os.environ.get("MLFLOW_TRACKING_URI")):
            if params.train.workers > 1:
                if on_epoch is not None:
                    raise ConfigError(
                        "a per-epoch callback (radflow sweep's early stopping) needs single-process training "
                        f"(train.workers=1, got {params.train.workers}); use --no-early-stop for data-parallel trials."
                    )
                return _launch(dataset_path, params, tracking_uri, experiment, resume, out_dir, progress)
            return _train(dataset_path, params, tracking_uri, experiment, resume, out_dir, progress, on_epoch=on_epoch)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Setup:
    """The model, its optimiser, schedule and AMP scaler, and what early stopping watches."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
    scaler: torch.amp.GradScaler
    use_amp: bool
    memory_format: torch.memory_format
    monitor: str
    mode: Literal["min", "max"]


@dataclass
class _Progress:
    """Where training stands: what a checkpoint stores and ``resume`` restores."""

    start_epoch: int = 0
    best: float | None = None
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None


def _resume_state(last_path: Path, ds: Dataset, cfg: TrainConfig) -> dict[str, Any]:
    """The state in ``last.pt``, checked to belong to this dataset version and architecture."""
    if not last_path.is_file():
        raise NotFoundError(f"nothing to resume: {last_path} does not exist; train without --resume first.")
    state = load_checkpoint(last_path)
    old = ModelMeta.from_dict(state["meta"])
    if old.dataset_version != ds.version:
        raise ConfigError(
            f"{last_path} was trained on dataset version {old.dataset_version}, this dataset is {ds.version}; "
            "resume only on the same data, or train without --resume."
        )
    if old.arch != cfg.arch:
        raise ConfigError(f"{last_path} holds a {old.arch} but train.arch is {cfg.arch}; use --arch {old.arch}.")
    return state


def _setup(cfg: TrainConfig, prep: _Prepared, device: torch.device, warnings: list[str], fresh: bool) -> _Setup:
    """Seed, build the model (with ``train.weights`` on a fresh run), the optimiser, schedule and scaler."""
    meta = prep.meta
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = create_model(cfg.arch, meta.num_outputs, cfg.in_chans, len(meta.extra_inputs), **meta.model_kwargs)
    if cfg.weights and fresh:
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
    monitor, mode = prep.kind.monitor
    if not prep.kind.monitor_defined(prep.ds.labels, prep.val_targets):
        monitor, mode = "val_loss", "min"
        warnings.append(
            f"{prep.kind.monitor[0]} is undefined on the val split (e.g. no label has both classes there); "
            "early stopping watches val_loss instead."
        )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    scheduler = _make_scheduler(cfg, optimizer, mode)
    return _Setup(model, optimizer, scheduler, scaler, use_amp, memory_format, monitor, mode)


def _restore(setup: _Setup, state: dict[str, Any], cfg: TrainConfig) -> _Progress:
    """Load a ``last.pt`` state into the setup; the progress to continue from."""
    setup.model.load_state_dict(state["model_state"])
    setup.optimizer.load_state_dict(state["optimizer"])
    if setup.scheduler is not None and state.get("scheduler"):
        setup.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        setup.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return _Progress(
        start_epoch=cfg.epochs if state.get("stopped_early") else int(state["epoch"]),
        best=state.get("best"),
        bad_epochs=int(state.get("bad_epochs", 0)),
        history=list(state.get("history", [])),
        run_id=state.get("run_id"),
    )


def _open_run(uri: str, experiment: str, run_id: str | None, name: str) -> str:
    """Start (or reopen, on resume) the MLflow run; its id."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(uri, experiment)
    try:
        run = mlflow.start_run(
            run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=None if run_id else name
        )
    except Exception as exc:
        raise RadflowError(f"could not open MLflow run {run_id or '(new)'} at {uri}: {exc}") from None
    return str(run.info.run_id)


def _log_run_start(params: Params, prep: _Prepared, device: torch.device, monitor: str) -> None:
    """Params, provenance tags and the training manifest as the run's input dataset (fresh runs only)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    ds, meta = prep.ds, prep.meta
    mlflow.log_params(flatten_params(params))
    commit, dirty = git_state()
    mlflow.set_tags(
        {
            "radflow.dataset_version": ds.version,
            "radflow.dataset_path": meta.dataset_path,
            "radflow.git_commit": commit,
            "radflow.git_dirty": str(dirty).lower(),
            "radflow.task": ds.task,
            "radflow.arch": params.train.arch,
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


class _Epochs:
    """The epoch loop: train, validate, step the schedule, early-stop, checkpoint and log each epoch."""

    def __init__(
        self,
        cfg: TrainConfig,
        prep: _Prepared,
        setup: _Setup,
        loss_fn: LossFn,
        device: torch.device,
        out_dir: Path,
        progress: _Progress,
        group: Group = SINGLE,
        on_epoch: EpochCallback | None = None,
    ):
        self.cfg, self.prep, self.setup, self.loss_fn, self.device = cfg, prep, setup, loss_fn, device
        self.on_epoch = on_epoch
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.state = progress
        self.group, self.steps_run = group, 0
        self.net = group.wrap(setup.model, device)  # what the train step runs: DDP on several ranks
        self.sampler_gen, self.aug_gen = torch.Generator(), torch.Generator()
        drop_last = len(prep.train_data) > cfg.batch_size  # a batch of one breaks BatchNorm
        self.rank_sampler: torch.utils.data.DistributedSampler[int] | None = None
        if group.parallel:
            # Seeded like the single-process sampler below, so the ranks split the permutation one process walks.
            self.train_loader, self.rank_sampler = group.train_loader(
                prep.train_data,
                cfg.batch_size,
                seed=cfg.seed * 1_000_003,
                num_workers=cfg.num_workers,
                drop_last=drop_last,
                pin_memory=device.type == "cuda",
            )
        else:
            self.train_loader = make_loader(
                prep.train_data,
                cfg.batch_size,
                shuffle=True,
                num_workers=cfg.num_workers,
                generator=self.sampler_gen,
                drop_last=drop_last,
                pin_memory=device.type == "cuda",
            )
        self.val_loader = make_loader(prep.val_data, max(cfg.batch_size, 64), shuffle=False)
        loader_steps = len(self.train_loader)
        self.steps_per_epoch = loader_steps if cfg.max_steps is None else min(loader_steps, cfg.max_steps)

    def run(self, show: bool) -> None:
        cfg = self.cfg
        with Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[metric]}"),
            TimeElapsedColumn(),
            console=_console,
            disable=not show,
            transient=False,
        ) as bar:
            for epoch in range(self.state.start_epoch + 1, cfg.epochs + 1):
                # Per-epoch seeds make a resumed run see the same batches as an uninterrupted one.
                self.sampler_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
                if self.rank_sampler is not None:
                    self.rank_sampler.set_epoch(epoch)
                # Each rank draws its own augmentations (rank 0 the single-process ones).
                self.aug_gen.manual_seed(cfg.seed * 2_000_003 + epoch + 7_919 * self.group.rank)
                task_id = bar.add_task(
                    "", total=self.steps_per_epoch, epoch=f"{epoch}/{cfg.epochs}", loss=0.0, metric=""
                )
                train_loss, images_per_s = self._train_epoch(epoch, bar, task_id)
                # Validation runs once, on rank 0; every rank steps the schedule and early-stops on its result.
                metrics = {
                    "train_loss": train_loss,
                    **self.group.from_main(self._validate(epoch) if self.group.is_main else None),
                    "lr": self.setup.optimizer.param_groups[0]["lr"],
                    "train_images_per_s": images_per_s,
                }
                score = metrics[self.setup.monitor]
                bar.update(task_id, metric=f"{self.setup.monitor} {score:.4f}")
                stop = self._end_epoch(epoch, metrics, score)
                if self.on_epoch is not None and self.group.is_main:
                    self.on_epoch(epoch, metrics)
                if stop:
                    _console.print(
                        f"early stopping: {self.setup.monitor} did not improve for {self.state.bad_epochs} epoch(s)"
                    )
                    break

    def _train_epoch(self, epoch: int, bar: Progress, task_id: Any) -> tuple[float, float]:
        """One pass over the train loader (at most ``train.max_steps`` steps): (mean loss, images per second)."""
        setup, device = self.setup, self.device
        model, optimizer, scaler = self.net, setup.optimizer, setup.scaler
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        for step, (x, y, extra) in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            self.steps_run += 1
            self.group.exit_if_told(self.steps_run)
            x = x.to(device, non_blocking=True).to(memory_format=setup.memory_format)
            y = y.to(device, non_blocking=True)
            network = self.prep.kind.network
            if network == "dense":
                x, y = augment(x, self.cfg.augment, self.aug_gen, masks=y)
            elif network == "detection":  # each image's boxes go through its affine and flip
                x, y = augment(x, self.cfg.augment, self.aug_gen, boxes=y)
            elif network == "pooled":
                x = augment(x, self.cfg.augment, self.aug_gen)
            with torch.autocast(device.type, dtype=torch.float16, enabled=setup.use_amp):
                if network == "detection":  # the detector computes its own loss terms from the boxes
                    out = model(x, targets=y)
                else:
                    out = model(x, extra.to(device) if extra.shape[1] else None)
            loss = self.loss_fn(out.float(), y)
            value = float(loss.item())
            if not math.isfinite(value):
                raise _nan_error(value, f"epoch {epoch}, step {step + 1}", optimizer, self.last_path, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(x)
            loss_sum += value * len(x)
            bar.update(task_id, advance=1, loss=loss_sum / seen)
        # The logged numbers are the global ones: the loss over every rank's images, the images of all ranks.
        total_loss, total_seen = self.group.sum(loss_sum, seen)
        train_time = self.group.max(time.perf_counter() - started)
        return total_loss / max(total_seen, 1), total_seen / max(train_time, 1e-9)

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict[str, float]:
        """Validation loss (on normalised targets, like the train loss) and the kind's validation metrics.

        Batch by batch: the loss is the mean of the batch losses weighted by their known targets (the
        whole split's loss for the masked means of the classifiers), and the kind keeps of each batch
        what its metrics need (:meth:`TaskKind.val_batch`), so a split of masks is never held whole.
        """
        prep, model, kind = self.prep, self.setup.model, self.prep.kind
        was_training = model.training
        model.eval()
        loss_sum, known_sum, start = 0.0, 0.0, 0
        kept: list[tuple[np.ndarray, np.ndarray]] = []
        for x, y, extra in self.val_loader:
            out = model(x.to(self.device), extra.to(self.device) if extra.shape[1] else None).float().cpu()
            if kind.network == "detection":  # the loss terms need the boxes; the mean is over images
                known = float(len(y))
                terms = model(x.to(self.device), targets=y.to(self.device)).float().cpu()
                loss_sum += float(self.loss_fn(terms, y)) * known
            else:
                known = float((~torch.isnan(y)).sum())
                loss_sum += float(self.loss_fn(out, y)) * known
            known_sum += known
            # Targets in user units: the loader's own unless the kind trains on normalised ones.
            targets = prep.val_targets[start : start + len(y)] if kind.normalise_targets else y.numpy()
            kept.append(kind.val_batch(outputs_to_predictions(out, prep.meta).numpy(), targets))
            start += len(y)
        model.train(was_training)
        val_loss = loss_sum / known_sum if known_sum else math.nan
        if not math.isfinite(val_loss):
            raise _nan_error(val_loss, f"validation after epoch {epoch}", self.setup.optimizer, self.last_path, epoch)
        preds, targets = (np.concatenate([k[i] for k in kept]) for i in (0, 1))
        return {"val_loss": val_loss, **kind.val_metrics(prep.ds.labels, preds, targets)}

    def _end_epoch(self, epoch: int, metrics: dict[str, float], score: float) -> bool:
        """Schedule, early stopping, history, MLflow metrics and checkpoints; whether to stop."""
        import mlflow

        setup, state, cfg = self.setup, self.state, self.cfg
        if isinstance(setup.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if math.isfinite(score):
                setup.scheduler.step(score)
        elif setup.scheduler is not None:
            setup.scheduler.step()
        improved = _improved(score, state.best, setup.mode)
        if improved:
            state.best, state.bad_epochs = score, 0
        else:
            state.bad_epochs += 1
        stop = cfg.early_stopping_patience > 0 and state.bad_epochs >= cfg.early_stopping_patience
        state.history.append({"epoch": epoch, **metrics})
        if not self.group.is_main:
            return stop
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=epoch)
        meta = self.prep.meta
        meta.epoch = epoch
        if improved:
            save_checkpoint(self.best_path, setup.model, meta, best=state.best)
        save_checkpoint(
            self.last_path,
            setup.model,
            meta,
            optimizer=setup.optimizer.state_dict(),
            scheduler=setup.scheduler.state_dict() if setup.scheduler is not None else None,
            scaler=setup.scaler.state_dict(),
            epoch=epoch,
            best=state.best,
            bad_epochs=state.bad_epochs,
            history=state.history,
            rng=_rng_state(),
            run_id=state.run_id,
            stopped_early=stop,
        )
        return stop


def _log_outcome(params: Params, best_path: Path, monitor: str, best: float | None) -> str:
    """Best metric, best checkpoint, params.yaml and the MLflow model of the best checkpoint; its model URI."""
    import mlflow

    from radflow.train.checkpoint import load_model

    if not best_path.is_file():
        raise RadflowError(
            f"no best checkpoint in {best_path.parent}; training ran no epoch (train.epochs={params.train.epochs})."
        )
    mlflow.log_metric(f"best_{monitor}", best if best is not None else math.nan)
    mlflow.log_artifact(str(best_path), artifact_path="checkpoint")
    mlflow.log_text(params.to_yaml(), "config/params.yaml")
    best_model, best_meta = load_model(best_path)
    model_uri = _log_model(best_model, best_meta)
    mlflow.set_tag("radflow.model_uri", model_uri)
    return model_uri


def _checked(dataset_path: Path, params: Params) -> tuple[Params, _Prepared, LossFn]:
    """The checks a user can fail, before the first expensive step: architecture, data, loss.

    Returns the params as the run trains them (the architecture the data asks for: the run is logged,
    checkpointed and resumed as that one), the prepared data and the loss.
    """
    model_network(params.train.arch)  # unknown architecture -> did-you-mean, before touching data
    prep = _prepare(dataset_path, params.train)
    if prep.meta.arch != params.train.arch:
        params = params.with_overrides({"train.arch": prep.meta.arch})
    return params, prep, make_loss(params.train.loss, prep.ds.task, prep.pos_weight)


def _train(
    dataset_path: Path,
    params: Params,
    tracking_uri: str | None,
    experiment: str,
    resume: bool,
    out_dir: Path | None,
    progress: bool,
    group: Group = SINGLE,
    run_id: str | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """One process's training; on several ranks (``group``) rank 0 alone opens ``run_id``, logs and checkpoints."""
    import mlflow

    dataset_path = Path(dataset_path)
    out_dir = Path(out_dir) if out_dir is not None else Path.cwd() / "checkpoints"
    params, prep, loss_fn = _checked(dataset_path, params)
    cfg = params.train
    device = group.device(resolve_device(cfg.device))
    uri = resolve_tracking_uri(tracking_uri)
    if group.is_main:
        check_tracking(uri)
    resume_state = _resume_state(out_dir / "last.pt", prep.ds, cfg) if resume else None

    warnings = list(prep.warnings)
    setup = _setup(cfg, prep, device, warnings, fresh=resume_state is None)
    state = _Progress() if resume_state is None else _restore(setup, resume_state, cfg)
    # Rank 0 opens the run (the one ``_launch`` made, on several ranks); the other ranks only carry its id.
    wanted = run_id or state.run_id
    state.run_id = _open_run(uri, experiment, wanted, _run_name(cfg, prep.ds)) if group.is_main else wanted
    prep.meta.run_id = state.run_id
    try:
        epochs = _Epochs(cfg, prep, setup, loss_fn, device, out_dir, state, group, on_epoch)
        if group.is_main and resume_state is None:
            _log_run_start(params, prep, device, setup.monitor)
        elif group.is_main:
            mlflow.set_tag("radflow.resumed_at_epoch", str(state.start_epoch))
        epochs.run(progress and group.is_main)
        group.barrier()  # every rank trained every epoch before the run can finish
        model_uri = _log_outcome(params, epochs.best_path, setup.monitor, state.best) if group.is_main else None
    except BaseException as exc:
        if group.is_main:
            # Stopped from outside (Ctrl-C, a scheduler's sys.exit) is not a failure of the run itself.
            mlflow.end_run(status="KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    if group.is_main:
        mlflow.end_run()
    return TrainResult(
        run_id=state.run_id or "",
        checkpoint_path=epochs.best_path,
        best_metric=state.best,
        epochs_run=len(state.history),
        history=state.history,
        monitor=setup.monitor,
        model_uri=model_uri,
        tracking_uri=uri,
        warnings=warnings,
        resumed_from_epoch=None if resume_state is None else state.start_epoch,
    )


def _run_name(cfg: TrainConfig, ds: Dataset) -> str:
    return f"{cfg.arch}-{ds.version[:8]}"


def _launch(
    dataset_path: Path,
    params: Params,
    tracking_uri: str | None,
    experiment: str,
    resume: bool,
    out_dir: Path | None,
    progress: bool,
) -> TrainResult:
    """Data-parallel training in ``train.workers`` processes; this process checks, owns the MLflow run and waits.

    The checks a user can fail run here, before any process starts. The run is created (or, on
    resume, taken from ``last.pt``) here too, so whatever happens to the ranks it ends FAILED unless
    every rank finished: rank 0 logs into it, and a rank that dies cannot leave it RUNNING or FINISHED.
    """
    from mlflow.tracking import MlflowClient

    dataset_path = Path(dataset_path)
    out_dir = Path(out_dir) if out_dir is not None else Path.cwd() / "checkpoints"
    params, prep, _ = _checked(dataset_path, params)
    cfg = params.train
    device = resolve_device(cfg.device)
    check_workers(cfg.workers, cfg.batch_size, device)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    run_id = _resume_state(out_dir / "last.pt", prep.ds, cfg).get("run_id") if resume else None
    client = MlflowClient(uri)
    if run_id is None:
        run_id = client.create_run(ensure_experiment(uri, experiment), run_name=_run_name(cfg, prep.ds)).info.run_id
    args = (dataset_path, params, uri, experiment, resume, out_dir, progress, run_id)
    try:
        result = run_ranks(_rank_train, cfg.workers, device, args)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return result


def _rank_train(
    group: Group,
    dataset_path: Path,
    params: Params,
    uri: str,
    experiment: str,
    resume: bool,
    out_dir: Path,
    progress: bool,
    run_id: str,
) -> TrainResult:
    """One rank of :func:`_launch` (module-level: spawn imports it by name)."""
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    return _train(dataset_path, params, uri, experiment, resume, out_dir, progress, group, run_id)
