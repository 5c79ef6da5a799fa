"""``radflow demo``: the main job end to end on embedded defaults, in a scratch workspace.

Phantom chest radiographs -> ingest -> patient-level split -> train (small CNN) with the run
in MLflow -> clinician-grade evaluation -> register through the quality gates -> promote
to champion -> export to ONNX with a parity check. Each step is timed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radflow.config import Params
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.split import split_dataset
from radflow.data.synth import synth_chest
from radflow.export.pipeline import export_model
from radflow.registry import promote, register
from radflow.tracking import resolve_tracking_uri
from radflow.train.loop import train

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

MODEL_NAME = "chest-xray"


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("demo-workspace")
    n: int = 2000
    """Phantom chest images to generate."""
    size: int = 128
    """Training size in pixels."""
    seed: int = 0
    epochs: int = 12
    labels: tuple[str, ...] = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation")
    """The five findings the phantom draws (CheXpert names)."""
    fresh: bool = True
    """Start from an empty workspace (the demo's MLflow store and registry included)."""


@dataclass
class DemoResult:
    workdir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    registration: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "steps": self.steps,
            "dataset": {k: self.dataset[k] for k in ("version", "task", "labels", "counts")},
            "split": self.split,
            "training": self.training,
            "evaluation": self.evaluation,
            "registration": self.registration,
            "export": self.export,
        }


def run_demo(config: DemoConfig, on_step: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo pipeline in ``config.workdir``; ``on_step(name)`` is called as each step starts."""
    workdir = config.workdir.resolve()
    if config.fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = DemoResult(workdir=workdir)
    raw = workdir / "data" / "raw" / "CheXpert-v1.0-phantom"
    dataset = workdir / "data" / "dataset"
    tracking_uri = resolve_tracking_uri(workspace=workdir)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        if on_step:
            on_step(name)
        start = time.perf_counter()
        value = fn()
        result.steps.append({"step": name, "seconds": round(time.perf_counter() - start, 2)})
        return value

    step("synth", lambda: synth_chest(raw, n=config.n, seed=config.seed, size=max(config.size * 2, 256)))
    result.dataset = step(
        "ingest",
        lambda: ingest(raw, "chexpert", dataset, IngestOptions(size=config.size, labels=list(config.labels))),
    )
    result.split = step("split", lambda: split_dataset(dataset, val=0.1, test=0.15, seed=config.seed))
    params = Params().with_overrides({"train.epochs": config.epochs, "train.seed": config.seed})
    trained = step(
        "train + evaluate",
        lambda: train(dataset, params, tracking_uri=tracking_uri, out_dir=workdir / "checkpoints"),
    )
    result.training = {k: v for k, v in trained.to_dict().items() if k != "evaluation"}
    result.evaluation = trained.evaluation or {}
    result.registration = step(
        "register", lambda: register(trained.run_id, MODEL_NAME, params.gates, tracking_uri=tracking_uri)
    )
    if result.registration["passed"]:
        step("promote", lambda: promote(MODEL_NAME, result.registration["version"], tracking_uri=tracking_uri))
        result.export = step(
            "export",
            lambda: export_model(
                f"models:/{MODEL_NAME}@champion", workdir / "models" / "model.onnx", tracking_uri=tracking_uri
            ),
        )
    return result
