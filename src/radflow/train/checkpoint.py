"""Checkpoints that carry everything needed to use the model: weights plus :class:`ModelMeta`.

A checkpoint is a ``torch.save`` dict ``{"format", "meta", "model_state", ...training state}``
holding only tensors and plain Python values, so it loads with ``weights_only=True`` (a model
fetched from a registry cannot run code on load). Files are written to a temporary name and
renamed, so a crash mid-save never destroys the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radflow.errors import ConfigError, DataError, NotFoundError

__all__ = [
    "CHECKPOINT_FILES",
    "CHECKPOINT_FORMAT",
    "ModelMeta",
    "check_out_dir",
    "latest_run_dir",
    "load_checkpoint",
    "load_model",
    "new_run_dir",
    "save_checkpoint",
    "update_checkpoint_meta",
]

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILES = ("last.pt", "best.pt")
"""What a training run writes into its checkpoint folder."""


@dataclass
class ModelMeta:
    """What a model predicts and how its input is made; travels in checkpoints, MLflow and ONNX metadata."""

    arch: str
    task: str
    labels: list[str]
    num_outputs: int
    in_chans: int = 1
    extra_inputs: list[str] = field(default_factory=list)
    preprocess: dict[str, Any] = field(default_factory=dict)
    dataset_version: str = ""
    dataset_path: str = ""
    target_unit: str | None = None
    target_mean: float | None = None
    target_std: float | None = None
    thresholds: dict[str, float] | None = None
    untrained_labels: list[str] = field(default_factory=list)
    """Labels with no positive in the train split: they have no threshold and are never called positive."""
    run_id: str | None = None
    epoch: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra create_model arguments (e.g. dropout) needed to rebuild the same network."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def save_checkpoint(path: str | Path, model: nn.Module, meta: ModelMeta, **state: Any) -> Path:
    """Write weights, meta and any training state (optimizer, epoch, ...) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "meta": meta.to_dict(), "model_state": model.state_dict(), **state}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (tensors on ``device``)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} does not exist.")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise DataError(f"not a readable radflow checkpoint ({exc}).", path=path) from None
    if not isinstance(payload, dict) or "meta" not in payload or "model_state" not in payload:
        raise DataError("not a radflow checkpoint (no meta/model_state); train one with `radflow train`.", path=path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"checkpoint format {payload.get('format')} is not supported.", path=path)
    return payload


def load_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model stored in a checkpoint, in eval mode on ``device``, with its meta."""
    from radflow.train.models import create_model

    payload = load_checkpoint(path, device)
    meta = ModelMeta.from_dict(payload["meta"])
    model = create_model(
        meta.arch, meta.num_outputs, in_chans=meta.in_chans, num_extra=len(meta.extra_inputs), **meta.model_kwargs
    )
    model.load_state_dict(payload["model_state"])
    model.to(device).eval()
    return model, meta


def update_checkpoint_meta(path: str | Path, **fields: Any) -> ModelMeta:
    """Change meta fields (e.g. ``thresholds``) of a checkpoint in place; returns the new meta."""
    payload = load_checkpoint(path)
    known = {f.name for f in dataclasses.fields(ModelMeta)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown checkpoint meta field(s) {unknown}; known: {', '.join(sorted(known))}.")
    payload["meta"].update(fields)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return ModelMeta.from_dict(payload["meta"])


def _owner(folder: Path) -> str | None:
    """Run id recorded in the folder's checkpoints (``None`` when they carry none or cannot be read)."""
    for name in CHECKPOINT_FILES:
        try:
            run_id = load_checkpoint(folder / name)["meta"].get("run_id")
        except (NotFoundError, DataError):
            continue
        if run_id:
            return str(run_id)
    return None


def check_out_dir(out_dir: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to train into a folder holding another run's checkpoints, unless resuming it or ``overwrite``.

    Two trainings pointed at one shared folder would otherwise silently replace each other's
    ``best.pt``, and a registered model's local checkpoint would change under it.
    """
    out_dir = Path(out_dir)
    present = [name for name in CHECKPOINT_FILES if (out_dir / name).is_file()]
    if not present or resume or overwrite:
        return
    owner = _owner(out_dir)
    raise ConfigError(
        f"{out_dir} already holds the checkpoints ({', '.join(present)}) of "
        f"{f'run {owner}' if owner else 'an earlier training'}; training would overwrite them. "
        "Pass --resume to continue that run, --overwrite to replace them, or choose another --out-dir."
    )


def new_run_dir(parent: Path, arch: str) -> Path:
    """A fresh per-run folder under ``parent``: ``<arch>-<UTC timestamp>`` (suffixed when taken)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    candidate = Path(parent) / f"{arch}-{stamp}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = Path(parent) / f"{arch}-{stamp}-{n}"
    return candidate


def latest_run_dir(parent: Path) -> Path | None:
    """The run folder under ``parent`` (or ``parent`` itself, the old shared layout) whose ``last.pt`` is newest."""
    parent = Path(parent)
    found = [p for p in [parent / "last.pt", *parent.glob("*/last.pt")] if p.is_file()]
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime_ns).parent
