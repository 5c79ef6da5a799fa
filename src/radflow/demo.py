"""``radflow demo``: the main job end to end on embedded defaults, through a reproducible workspace.

``radflow init DIR --source synthetic`` with the demo's sizes -> ``radflow run`` (phantom chest
radiographs -> ingest -> patient-level split -> train -> evaluate -> export -> register, as a DVC
experiment) -> promote the registered version to champion when it passed its gates. Each step is
timed. Then :func:`serve_demo` serves the champion with the web UI until Ctrl-C, with a simulated
clinic sending held-out phantoms and reader feedback, so the dashboard and monitoring show live
data from the first minute.

``task="segmentation"`` runs the same job on the phantom's exact masks (``synth --masks`` -> ingest
``--format masks`` -> ``small_unet``), sized by :data:`SEGMENTATION_DEFAULTS`, and its clinic sends the
train split (phantom patients of a new clinic exist for classification only), without feedback.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLASSIFICATION_LABELS",
    "MODEL_NAME",
    "SEGMENTATION_DEFAULTS",
    "SEGMENTATION_TRAIN",
    "DemoConfig",
    "DemoResult",
    "DemoServing",
    "next_steps",
    "run_demo",
    "serve_command",
    "serve_demo",
]

MODEL_NAME = "chest-xray"
CLASSIFICATION_LABELS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation")
"""The five findings the phantom draws (CheXpert names)."""
SEGMENTATION_DEFAULTS: dict[str, int] = {"n": 400, "size": 64, "epochs": 10}
"""The segmentation demo's phantoms, training size and epochs (``--n``, ``--size``, ``--epochs`` override them)."""
SEGMENTATION_TRAIN: dict[str, Any] = {
    "train.batch_size": 8,
    "train.lr": 3e-3,
    "gates.min_mean_dice": 0.3,
    "gates.min_dice": {"Right Lung": 0.9, "Left Lung": 0.9, "Heart": 0.85},
}
"""small_unet on 300 train phantoms: at batch 32 and lr 1e-3, 10 epochs are ~100 steps and the left lung is never
learned (test Dice 0.0); at batch 8 and 3e-3, the same compute gives lungs 0.97, heart 0.96-0.98 (seed 0). The
small findings (effusion, pneumothorax, lesion) are not learned in 10 epochs and hold the mean Dice near 0.5, so
the demo gates the anatomy by structure and the mean at 0.3."""


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("demo-workspace")
    n: int = 2000
    """Phantom chest images to generate."""
    size: int = 128
    """Training size in pixels."""
    seed: int = 0
    epochs: int = 12
    labels: tuple[str, ...] | None = None
    """Findings (or structures) to train on; default: :data:`CLASSIFICATION_LABELS`, or every structure drawn."""
    task: str | None = None
    """``segmentation`` for the phantom's masks; default: the CheXpert findings."""
    fresh: bool = True
    """Start from an empty workspace (the demo's MLflow store and registry included)."""
    sets: tuple[str, ...] = ()
    """Further params as ``key=value`` (``train.arch=resnet18``), written into the workspace's params.yaml."""


@dataclass
class DemoResult:
    workdir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    registration: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "steps": self.steps,
            "run": self.run,
            "evaluation": self.evaluation,
            "registration": self.registration,
            "promotion": self.promotion,
            "next_steps": next_steps(self),
        }


def serve_command(workdir: Path) -> str:
    """The command that serves the demo's champion with the UI."""
    return f"radflow serve --workspace {workdir}"


def next_steps(result: DemoResult) -> list[str]:
    """The commands worth trying after the demo, as ``label: command`` lines that work in the state it left.

    Only a promoted version has a ``@champion`` to trace and serve; a version that failed its gates is traced
    by number and needs a better run (or ``promote --force``) before there is anything to serve.
    """
    workdir = result.workdir
    lines = [f"workspace:   {workdir}  (cd there: radflow run -S train.lr=3e-4 · dvc exp show)"]
    if result.promotion:
        uri = f"models:/{result.promotion['name']}@champion"
        lines.append(f"lineage:     radflow lineage {uri} --workspace {workdir}")
    elif result.registration:
        name, version = result.registration["name"], result.registration["version"]
        lines.append(f"lineage:     radflow lineage models:/{name}/{version} --workspace {workdir}")
        lines.append(f"to serve:    no champion yet; train longer: cd {workdir} && radflow run -S train.epochs=30")
        lines.append(f"             or promote it anyway: cd {workdir} && radflow promote {name} {version} --force")
    else:
        lines.append("to serve:    nothing was registered; see the pipeline's output above")
    lines.append(f"browse runs: radflow ui --workspace {workdir}")
    if result.promotion:
        lines.append(f"serve:       {serve_command(workdir)}")
    return lines


def run_demo(
    config: DemoConfig, on_step: Callable[[str], None] | None = None, on_line: Callable[[str], None] | None = None
) -> DemoResult:
    """Run the demo in ``config.workdir``; ``on_step(name)`` is called as each step starts.

    ``on_line`` receives the pipeline's (DVC's) output line by line.
    """
    from radflow.pipeline.dvc_yaml import EVAL_DIR
    from radflow.pipeline.run import parse_sets, run_pipeline
    from radflow.pipeline.workspace import init_workspace
    from radflow.registry import promote
    from radflow.tracking import resolve_tracking_uri

    workdir = config.workdir.resolve()
    if config.fresh and workdir.exists():
        shutil.rmtree(workdir)
    result = DemoResult(workdir=workdir)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        if on_step:
            on_step(name)
        start = time.perf_counter()
        value = fn()
        result.steps.append({"step": name, "seconds": round(time.perf_counter() - start, 2)})
        return value

    segmentation = config.task == "segmentation"
    labels = config.labels or (() if segmentation else CLASSIFICATION_LABELS)
    overrides: dict[str, Any] = {
        "data.synth.n": config.n,
        "data.synth.seed": config.seed,
        # Phantoms are drawn at twice the training size (at least 256 px), as a scanner's film would be.
        "data.synth.size": max(config.size * 2, 256),
        "data.size": config.size,
        **({"data.labels": list(labels)} if labels else {}),
        "split.seed": config.seed,
        "train.epochs": config.epochs,
        "train.seed": config.seed,
        **(SEGMENTATION_TRAIN if segmentation else {"registry.name": MODEL_NAME}),
        **parse_sets(list(config.sets)),
    }
    if not (workdir / "dvc.yaml").is_file():
        step("init", lambda: init_workspace(workdir, "synthetic", overrides=overrides, task=config.task))
    result.run = step("pipeline", lambda: run_pipeline(workdir, on_line=on_line))
    evaluation = workdir / EVAL_DIR / "evaluation.json"
    if evaluation.is_file():
        result.evaluation = json.loads(evaluation.read_text())
    result.registration = result.run.get("registration", {})
    reg = result.registration
    if reg.get("passed"):
        uri = resolve_tracking_uri(workspace=workdir)
        result.promotion = step("promote", lambda: promote(reg["name"], reg["version"], tracking_uri=uri))
    return result


@dataclass
class DemoServing:
    """What :func:`serve_demo` started: where, with which admin token, and the simulation's final counts."""

    url: str = ""
    admin_token: str = ""
    token_generated: bool = False
    simulation: dict[str, Any] = field(default_factory=dict)


def serve_demo(
    workdir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    simulate: bool = True,
    rate: float = 2.0,
    feedback_rate: float = 0.3,
    on_ready: Callable[[DemoServing], None] | None = None,
    split: str | None = None,
) -> DemoServing:
    """Serve the workspace's champion (and UI) until SIGINT/SIGTERM; optionally drive it with a simulated clinic.

    The admin API is on, with ``RADFLOW_ADMIN_TOKEN`` or a fresh random token (shown by ``on_ready``),
    so the dashboard's promote/rollback/canary controls work. When ``port`` is taken, a free one is used.
    ``split`` makes the clinic send that dataset split instead of new phantom patients.
    """
    from pydantic import SecretStr

    from radflow.inference import ServeSettings
    from radflow.pipeline.dvc_yaml import SPLIT_DATASET
    from radflow.serve.server import free_port, port_is_free, run_server

    workdir = workdir.resolve()
    serving = DemoServing()
    settings = ServeSettings(workspace=workdir, auth="off")  # the local demo: open, and the server says so
    if settings.admin_token is None:
        settings = settings.model_copy(update={"admin_token": SecretStr(secrets.token_urlsafe(18))})
        serving.token_generated = True
    assert settings.admin_token is not None
    serving.admin_token = settings.admin_token.get_secret_value()
    if not port_is_free(host, port):
        port = free_port(host)
    background: list[Any] = []

    def ready(url: str) -> None:
        serving.url = url
        if simulate:
            from radflow.sim.simulator import start_background

            background.append(
                start_background(
                    url, workdir / SPLIT_DATASET, rate=rate, duration=None, feedback_rate=feedback_rate, split=split
                )
            )
        if on_ready is not None:
            on_ready(serving)

    def stop_sending() -> None:
        for sim in background:
            sim.simulator.stop()  # no new requests; in-flight ones are answered during the drain

    try:
        run_server(
            settings,
            host=host,
            port=port,
            log_level="warning",
            on_ready=ready,
            on_exit=stop_sending,
        )
    finally:
        for sim in background:
            serving.simulation = sim.stop()
    return serving
