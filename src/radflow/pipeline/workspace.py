"""``radflow init``: a workspace is a git repo + DVC project with ``params.yaml`` and the radflow pipeline.

Layout (see ARCHITECTURE.md): ``params.yaml`` (every tunable, its description as a comment), ``dvc.yaml``
(the stages), ``data/raw`` (raw images, tracked by DVC: the synth stage's output for phantom data, ``dvc add``-ed
otherwise), ``data/dataset`` and ``data/split`` (stage outputs), ``models/``, ``metrics/``,
``plots/``, ``reports/``, and ``mlflow.db`` / ``mlartifacts/`` (the MLflow store, not in git).
The DVC cache links files (hardlink, else symlink) instead of storing images twice; a local
remote (``.dvc-remote/`` unless ``--remote`` says otherwise) makes ``dvc push`` / ``dvc pull`` work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from radflow.config import SOURCES, Params, load_params, params_yaml
from radflow.errors import ConfigError, NotFoundError, RadflowError, did_you_mean
from radflow.pipeline.dvc_yaml import SYNTH_DIR, dvc_yaml
from radflow.tracking import telemetry_off

__all__ = [
    "DEFAULT_REMOTE",
    "SEGMENTATION_MODEL_NAME",
    "WORKSPACE_TASKS",
    "commit_first_run",
    "commit_paths",
    "dvc_add",
    "find_workspace",
    "git_env",
    "in_folder",
    "init_workspace",
    "pipeline_folders",
    "run_git",
    "task_params",
    "use_extra_source",
]

DEFAULT_REMOTE = ".dvc-remote"
WORKSPACE_TASKS = ("multilabel", "segmentation", "detection")
"""What ``radflow init --task`` may ask of phantom data: CheXpert findings, or masks or boxes of what it draws."""
_SEGMENTATION_SOURCES = ("synthetic", "siim", "masks")
SEGMENTATION_MODEL_NAME = "chest-segmentation"
DETECTION_MODEL_NAME = "chest-detection"
GIT_USER = ("radflow", "radflow@localhost")
_GITIGNORE = """\
# MLflow store, pseudonymisation key, DVC's default local remote, checkpoints (kept out of git)
/mlflow.db
/mlartifacts/
/.radflow-salt
/.dvc-remote/
/models/checkpoints/
# The server's prediction log and stored inputs: `radflow feedback export` turns them into data/feedback
/serving.db*
/inputs/
# radflow sweep: the trials' checkpoints, Tune's files and the best trial's export (sweeps/NAME/sweep.json is kept)
/sweeps/*/trial-*/
/sweeps/*/tune/
/sweeps/*/best/
"""


def git_env() -> dict[str, str]:
    """The environment for git and DVC subprocesses: telemetry off, radflow's interpreter first on PATH."""
    env = telemetry_off(dict(os.environ))
    # Stages run `radflow stage NAME`: make that the radflow of this interpreter even without an active venv.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def run_git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``git ARGS`` in ``root``; a failure raises RadflowError with git's message."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=git_env(), timeout=120)
    except FileNotFoundError:
        raise RadflowError("git is not installed; a radflow workspace is a git repository. Install git.") from None
    if check and done.returncode != 0:
        raise RadflowError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def find_workspace(start: Path | None = None) -> Path:
    """The workspace holding ``start`` (default: cwd): the nearest folder up with params.yaml, dvc.yaml and .dvc/."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / ".dvc").is_dir() and (folder / "params.yaml").is_file():
            return folder
    raise NotFoundError(
        f"{here} is not inside a radflow workspace (no params.yaml + dvc.yaml + .dvc/ here or above). "
        "Create one with `radflow init DIR --source synthetic` and run commands inside it, or pass --workspace DIR."
    )


def _copy_raw(src: Path, dst: Path) -> None:
    """Bring the raw data into the workspace, hard-linking files where the filesystem allows."""

    def link_or_copy(a: str, b: str) -> object:
        try:
            os.link(a, b)
            return b
        except OSError:
            return shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link_or_copy)
    else:  # a label CSV: take the folder it sits in, images and all
        shutil.copytree(src.parent, dst, copy_function=link_or_copy)


@contextlib.contextmanager
def _quiet_dvc() -> Iterator[None]:
    """Keep DVC's in-process logging (its "Initialized DVC repository" banner) off our stdout.

    DVC's handlers hold the stream they first saw; under a test runner that stream may be closed by now.
    """
    import dvc  # noqa: F401  # importing dvc installs its handlers: do it before they are swapped out

    logger = logging.getLogger("dvc")
    saved = (logger.handlers[:], logger.propagate)
    logger.handlers, logger.propagate = [logging.NullHandler()], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved


def _setup_dvc(root: Path, params: Params, remote_url: str, data: Path | None) -> None:
    from dvc.repo import Repo

    repo = Repo.init(str(root))
    try:
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            # Link files from the cache instead of copying: images are not stored twice.
            conf["cache"]["type"] = "hardlink,symlink"
            conf["remote"]["local"] = {"url": remote_url}
            conf["core"]["remote"] = "local"
        if data is not None:
            _copy_raw(Path(data), root / params.data.raw)
            repo.add(str(root / params.data.raw))
    finally:
        repo.close()


def _raw_md5(root: Path, params: Params) -> str | None:
    outs = (yaml.safe_load((root / f"{params.data.raw}.dvc").read_text()) or {}).get("outs", [])
    return str(outs[0].get("md5")) if outs else None


def task_params(task: str | None, source: str) -> dict[str, Any]:
    """The params a workspace for ``task`` on ``source`` starts from (before the user's overrides).

    A segmentation workspace (``--task segmentation``, or a mask source) trains a dense network, names its
    model apart from the classifier's, and on phantom data has the synth stage write the masks it ingests.
    A detection workspace (``--task detection``, phantom data) has the synth stage write the findings' COCO
    boxes, ingests them (``coco-boxes``) and trains the FCOS detector.
    """
    if task is not None and task not in WORKSPACE_TASKS:
        raise ConfigError(
            f"unknown task {task!r}.{did_you_mean(task, WORKSPACE_TASKS)} Tasks: {', '.join(WORKSPACE_TASKS)}."
        )
    segmentation = task == "segmentation" or source in ("siim", "masks")
    if task == "segmentation" and source not in _SEGMENTATION_SOURCES:
        raise ConfigError(
            f"--task segmentation needs masks: --source {' or '.join(_SEGMENTATION_SOURCES)}, not {source}."
        )
    if task == "detection":
        if source != "synthetic":
            raise ConfigError(
                f"--task detection builds a workspace on phantom boxes (--source synthetic), not {source}; for your "
                "own boxes, ingest them with `radflow ingest SRC --format rsna-boxes|vinbig|nih-boxes|coco-boxes`."
            )
        return {"train.arch": "fcos_small", "registry.name": DETECTION_MODEL_NAME, "data.synth.boxes": True}
    if task == "multilabel" and segmentation:
        raise ConfigError(f"--source {source} holds masks (a segmentation source); drop --task {task}.")
    if not segmentation:
        return {}
    found: dict[str, Any] = {"train.arch": "small_unet", "registry.name": SEGMENTATION_MODEL_NAME}
    if source == "synthetic":
        found["data.synth.masks"] = True
    return found


def init_workspace(
    directory: Path,
    source: str = "synthetic",
    data: Path | None = None,
    *,
    remote: str | None = None,
    overrides: dict[str, Any] | None = None,
    task: str | None = None,
    workflow: str | None = None,
) -> dict[str, Any]:
    """Create a workspace in ``directory`` (new or empty); returns a summary of what was made.

    ``overrides`` are dotted params (``{"train.epochs": 1}``) written into params.yaml, over the
    ones ``task`` (:func:`task_params`) starts from. ``workflow`` makes a workflow workspace instead: one
    pipeline per model step in ``steps/STEP/`` and the workflow stage at the root
    (:func:`radflow.pipeline.workflow.workflow_workspace_params`; overrides as it reads them).
    """
    if workflow is not None and (task is not None or source != "synthetic" or data is not None):
        raise ConfigError("--workflow builds its own steps on phantom data: drop --task, --source and --data.")
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}.{did_you_mean(source, SOURCES)} Sources: {', '.join(SOURCES)}.")
    overrides = {**task_params(task, source), **(overrides or {})}
    root = Path(directory).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} exists and is not an empty folder; pick a new directory for the workspace.")
    if source != "synthetic":
        if data is None:
            raise ConfigError(f"--source {source} needs --data PATH: the folder (or label CSV) of the raw images.")
        if not Path(data).exists():
            raise NotFoundError(f"--data {data} does not exist.")
    elif data is not None:
        raise ConfigError("--source synthetic generates its own data; drop --data or name the source it is in.")
    steps: dict[str, Params] = {}
    if workflow is not None:
        from radflow.pipeline.workflow import workflow_workspace_params

        params, steps = workflow_workspace_params(workflow, overrides)
    else:
        data_section: dict[str, Any] = {"source": source}
        if source == "synthetic":
            data_section["raw"] = SYNTH_DIR
        params = Params.model_validate({"data": data_section}).with_overrides(overrides)
    root.mkdir(parents=True, exist_ok=True)
    run_git(root, "init", "-q")
    for key, value in zip(("user.name", "user.email"), GIT_USER, strict=True):
        # Commits need an identity; set one in this repository only when git has none at all.
        if not run_git(root, "config", key, check=False).stdout.strip():
            run_git(root, "config", "--local", key, value)
    (root / "params.yaml").write_text(params_yaml(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml(params), sort_keys=False))
    (root / ".gitignore").write_text(_GITIGNORE)
    for folder, step_params in steps.items():  # each step: an ordinary pipeline in its own folder
        (root / folder).mkdir(parents=True)
        (root / folder / "params.yaml").write_text(params_yaml(step_params))
        (root / folder / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml(step_params), sort_keys=False))
        (root / folder / ".gitignore").write_text(_GITIGNORE)
    remote_url = remote or str(root / DEFAULT_REMOTE)
    if remote is None:
        (root / DEFAULT_REMOTE).mkdir()
    with _quiet_dvc():
        _setup_dvc(root, params, remote_url, data)
    for folder in ["", *steps]:
        load_params(root / folder / "params.yaml")  # what we wrote must read back
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", f"radflow workspace ({f'workflow {workflow}' if workflow else source})")
    commit = run_git(root, "rev-parse", "HEAD").stdout.strip()
    stage_names = [
        *(f"{folder}/dvc.yaml:{name}" for folder, p in steps.items() for name in dvc_yaml(p)["stages"]),
        *dvc_yaml(params)["stages"],
    ]
    return {
        "workspace": str(root),
        "source": source,
        "workflow": workflow,
        "stages": stage_names,
        "remote": remote_url,
        "raw_data": params.data.raw if data is not None else None,
        "raw_md5": _raw_md5(root, params) if data is not None else None,
        "commit": commit,
    }


def use_extra_source(root: Path, folder: str) -> bool:
    """List ``folder`` in ``data.extra`` and make it an ingest dep in ``dvc.yaml``; False when it already was."""
    params = load_params(root / "params.yaml")
    if folder in params.data.extra:
        return False
    params = params.with_overrides({"data.extra": [*params.data.extra, folder]})
    (root / "params.yaml").write_text(params_yaml(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml(params), sort_keys=False))
    return True


def dvc_add(root: Path, path: str) -> str:
    """``dvc add PATH``: track a data folder (cache + remote); returns its md5 from the ``.dvc`` file."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "add", "-q", path], cwd=root, capture_output=True, text=True, env=git_env()
    )
    if done.returncode != 0:
        raise RadflowError(f"dvc add {path} failed in {root}: {(done.stderr or done.stdout).strip()}")
    outs = (yaml.safe_load((root / f"{path}.dvc").read_text()) or {}).get("outs", [])
    return str(outs[0].get("md5", "")) if outs else ""


def commit_paths(root: Path, paths: list[str], message: str) -> str | None:
    """Commit exactly ``paths`` (other edits in the tree stay uncommitted); returns the commit, None if unchanged."""
    present = [p for p in paths if (root / p).exists()]
    run_git(root, "add", "--", *present)
    if run_git(root, "diff", "--cached", "--quiet", "--", *present, check=False).returncode == 0:
        return None
    run_git(root, "commit", "-q", "-m", message, "--", *present)
    return run_git(root, "rev-parse", "HEAD").stdout.strip()


def pipeline_folders(root: Path) -> list[str]:
    """The folders holding a dvc.yaml of the workspace's pipeline: ``""`` (the root), then a workflow workspace's
    step folders (``workflow_stage.steps``, each its own pipeline)."""
    try:
        raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [""]
    stage = raw.get("workflow_stage") if isinstance(raw, dict) else None
    steps = stage.get("steps", []) if isinstance(stage, dict) else []
    return ["", *(str(s).strip("/") for s in steps if (root / str(s) / "dvc.yaml").is_file())]


def in_folder(folder: str, path: str) -> str:
    """``path`` of a dvc.yaml in ``folder`` as seen from the workspace root."""
    return f"{folder}/{path}" if folder else path


def _uncached_outputs(root: Path) -> list[str]:
    """The ``cache: false`` outs, metrics and plots of every ``dvc.yaml``: results DVC leaves to git."""
    found = []
    for folder in pipeline_folders(root):
        stages = (yaml.safe_load((root / folder / "dvc.yaml").read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for kind in ("outs", "metrics", "plots"):
                for entry in stage.get(kind, []):
                    if isinstance(entry, dict) and next(iter(entry.values())).get("cache") is False:
                        found.append(in_folder(folder, next(iter(entry))))
    return found


def commit_first_run(root: Path) -> str | None:
    """After the first successful run, commit what it wrote for git: the baseline later runs compare to.

    Until HEAD holds ``dvc.lock`` and the metrics, ``dvc metrics diff`` warns "failed to load some
    metrics for HEAD" and ``dvc exp show`` has no baseline row. Committed: ``dvc.lock``, ``params.yaml``
    (a first run with ``-S`` changed it), the uncached metrics, plots and registration, and the
    ``.gitignore`` files DVC wrote beside its outputs; never what ``.gitignore`` keeps out (checkpoints).
    Returns the commit, None when HEAD already had a ``dvc.lock`` (later runs are DVC experiments).
    """
    if (
        not (root / "dvc.lock").is_file()
        or run_git(root, "cat-file", "-e", "HEAD:dvc.lock", check=False).returncode == 0
    ):
        return None
    results = [p for p in _uncached_outputs(root) if run_git(root, "check-ignore", "-q", p, check=False).returncode]
    ignores = run_git(root, "ls-files", "--others", "--exclude-standard", "--", ":(glob)**/.gitignore").stdout.split()
    folders = pipeline_folders(root)
    return commit_paths(
        root,
        [*(in_folder(f, name) for f in folders for name in ("dvc.lock", "params.yaml")), *results, *ignores],
        "radflow run: the first run's dvc.lock, metrics and plots (the baseline of dvc metrics diff and dvc exp show)",
    )
