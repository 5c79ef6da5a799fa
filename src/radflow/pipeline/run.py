"""``radflow run``: the workspace pipeline as a DVC experiment, and what it produced.

Parameters given as ``-S key=value`` are checked against :class:`radflow.config.Params` first (a
misspelt key fails with a suggestion before DVC starts), then handed to ``dvc exp run``, which
reruns only the stages whose deps or params changed. DVC's log says which stages ran and which
were skipped; the result also carries the metrics, the registration and the timing.

A run with nothing changed must be quick, but DVC needs several seconds just to walk a raw
dataset of a few thousand per-study folders. So after each successful run radflow records a
signature of the pipeline's inputs and outputs (params.yaml, dvc.yaml, dvc.lock, and path, size,
mtime and inode of every file under a stage's deps and outs, the same facts DVC's own state cache
trusts); when a plain ``radflow run`` finds the same signature, nothing can rerun and DVC is not
started.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from radflow.config import load_params
from radflow.errors import ConfigError, RadflowError
from radflow.pipeline import dvc_yaml as paths
from radflow.pipeline.workspace import commit_first_run, find_workspace, git_env, in_folder, pipeline_folders
from radflow.tracking import check_tracking, resolve_tracking_uri

__all__ = ["SIGNATURE_FILE", "is_dvc_notice", "parse_sets", "pipeline_signature", "run_pipeline"]

SIGNATURE_FILE = ".dvc/tmp/radflow-run.json"

_RAN = re.compile(r"Running stage '([^']+)'")
_SKIPPED = re.compile(r"Stage '([^']+)' (?:didn't change|is cached)")
_EXP = re.compile(r"Ran experiment\(s\): (\S+)|Experiment '?([\w-]+)'? (?:is|was)")
# DVC's warnings, e.g. "No file hash info found for '...'. It won't be created." for outputs a stage
# has not made yet; colour codes stripped first.
_NOTICE = re.compile(r"^\s*WARNING:")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_dvc_notice(line: str) -> bool:
    """Whether a line of ``dvc exp run`` output is one of DVC's warnings (shown only with ``radflow -v``)."""
    return bool(_NOTICE.match(_ANSI.sub("", line)))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4"]`` to ``{"train.lr": 3e-4}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-S expects KEY=VALUE (e.g. train.lr=3e-4), got {item!r}.")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data


def _stage_paths(root: Path) -> tuple[list[str], list[str]]:
    """(stage names, every dep/out/metric/plot path) of each ``dvc.yaml``, paths from the root.

    A step pipeline's stages are named as DVC names them (``steps/x/dvc.yaml:train``); its paths may
    climb out of its folder (a crop step reads ``../vertebra/data/split``).
    """
    names: list[str] = []
    found: set[str] = set()
    for folder in pipeline_folders(root):
        stages = (yaml.safe_load((root / folder / "dvc.yaml").read_text()) or {}).get("stages", {})
        names += [in_folder(folder, f"dvc.yaml:{name}") if folder else name for name in stages]
        for stage in stages.values():
            for kind in ("deps", "outs", "metrics", "plots"):
                for entry in stage.get(kind, []):
                    rel = next(iter(entry)) if isinstance(entry, dict) else str(entry)
                    found.add(os.path.normpath(in_folder(folder, rel)))
    return names, sorted(found)


def pipeline_signature(root: Path) -> str:
    """A digest that changes when anything a stage reads or writes may have changed (see the module docstring)."""
    digest = hashlib.sha256()
    for name in (
        *(in_folder(f, n) for f in pipeline_folders(root) for n in ("params.yaml", "dvc.yaml", "dvc.lock")),
        *sorted(str(p.relative_to(root)) for p in [*root.glob("*.dvc"), *root.glob("data/*.dvc")]),
    ):
        path = root / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
    for rel in _stage_paths(root)[1]:
        top = root / rel
        files = [top] if top.is_file() else []
        for folder, dirs, names in os.walk(top):
            dirs.sort()
            files += [Path(folder) / n for n in sorted(names)]
        if not files and not top.exists():
            digest.update(f"{rel}:missing\0".encode())
        for file in files:
            st = file.stat()
            digest.update(f"{file.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}\0".encode())
    return digest.hexdigest()


def _unchanged(root: Path) -> bool:
    try:
        recorded = json.loads((root / SIGNATURE_FILE).read_text()).get("signature")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(recorded) and recorded == pipeline_signature(root)


def _result(root: Path, ran: list[str], skipped: list[str], experiment: str | None, seconds: float) -> dict[str, Any]:
    common: dict[str, Any] = {"workspace": str(root), "ran": ran, "skipped": skipped, "experiment": experiment}
    common["seconds"] = round(seconds, 2)
    workflow = _read(root / paths.WORKFLOW_METRICS)
    if workflow:  # a workflow workspace: its verdict is the workflow stage's, each step's registration beside it
        steps = {f: _read(root / f / paths.REGISTRATION) for f in pipeline_folders(root)[1:]}
        judged = {"metrics": workflow.get("metrics", {}), "training": {}, "registration": {}}
        return {**common, **judged, "workflow": workflow, "steps": steps, "gates_passed": bool(workflow.get("passed"))}
    registration = _read(root / paths.REGISTRATION)
    return {
        **common,
        "metrics": _read(root / paths.METRICS),
        "training": _read(root / paths.TRAIN_METRICS),
        "registration": registration,
        # The workspace's current model, whether registered by this run or an earlier one: a rerun that
        # changes nothing still reports a failed gate (a CI job must not turn green by running twice).
        "gates_passed": bool(registration.get("passed")) if registration else None,
    }


def _dvc_sets(root: Path, sets: list[str]) -> list[str]:
    """``-S`` items checked against the params they change, as ``dvc exp run -S`` takes them.

    In a workflow workspace a step's param is ``STEP.KEY=V`` (``vertebra.train.lr=3e-4``), checked against that
    step's params.yaml and handed to DVC as ``steps/STEP/params.yaml:KEY=V``; the root's own params are only
    ``workflow_stage`` and ``workflows`` (any other root key would change nothing a stage reads).
    """
    params = load_params(root / "params.yaml")
    if params.workflow_stage is None:
        params.with_overrides(parse_sets(sets))
        return sets
    steps = {Path(folder).name: folder for folder in pipeline_folders(root)[1:]}
    out = []
    for item in sets:
        key, value = next(iter(parse_sets([item]).items()))
        head, _, rest = key.partition(".")
        if head in steps and rest:
            load_params(root / steps[head] / "params.yaml").with_overrides({rest: value})
            out.append(f"{steps[head]}/params.yaml:{item.partition('=')[0].strip()[len(head) + 1 :]}="
                       f"{item.partition('=')[2]}")  # fmt: skip
        elif head in ("workflow_stage", "workflows"):
            params.with_overrides({key: value})
            out.append(item)
        else:
            raise ConfigError(
                f"-S {key}: a workflow workspace's params are its steps'; name the step: -S STEP.{key}=... "
                f"(steps: {', '.join(steps)}), or change workflow_stage.* / workflows.*."
            )
    return out


def _stop_dvc(proc: subprocess.Popen[str], grace_s: float = 60.0) -> None:
    """After Ctrl-C, let DVC finish its own interrupt handling before radflow exits.

    DVC releases its stage locks (``.dvc/tmp/rwlock``) and restores the workspace on
    KeyboardInterrupt; leaving before it has done so would block the next run with "is busy".
    A Ctrl-C in a terminal reaches DVC too; a SIGINT sent to radflow alone is passed on.
    """
    try:
        proc.communicate(timeout=2)  # keeps draining its output, so it never blocks on a full pipe
        return
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def run_pipeline(
    workspace: Path | None = None,
    sets: list[str] | None = None,
    *,
    name: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the pipeline of ``workspace`` (default: the one holding cwd) as a DVC experiment.

    ``on_line`` receives DVC's output line by line as it comes. Returns ``{"workspace", "ran",
    "skipped", "experiment", "seconds", "stage_seconds", "metrics", "training", "registration",
    "gates_passed", "baseline_commit"}`` (``gates_passed`` None before anything was registered); a failed
    gate is a result, not an error: ``radflow run`` turns it into exit code 1. The workspace's first
    successful run is committed (:func:`~radflow.pipeline.workspace.commit_first_run`; ``baseline_commit``)
    so ``dvc metrics diff`` and ``dvc exp show`` compare later runs to it.
    """
    root = find_workspace(workspace)
    # Validate before DVC sees anything: the file itself, then each override's key and value.
    sets = _dvc_sets(root, list(sets or []))
    # A tracking server (MLFLOW_TRACKING_URI) that does not answer fails now, not at the train stage minutes in.
    check_tracking(resolve_tracking_uri(workspace=root))
    started = time.perf_counter()
    if not sets and not name and _unchanged(root):
        if on_line:
            on_line("Nothing changed since the last run: every stage is up to date.")
        nothing = _result(root, [], _stage_paths(root)[0], None, time.perf_counter() - started)
        return {**nothing, "stage_seconds": {}, "baseline_commit": None}
    command = [sys.executable, "-m", "dvc", "exp", "run"]
    for item in sets:
        command += ["-S", item]
    if name:
        command += ["--name", name]
    lines: list[str] = []
    # When each stage started (from DVC's "Running stage" lines), for the per-stage timing.
    marks: list[tuple[str, float]] = []
    # Every stage logs into the workspace's store, a step pipeline's (run in its own folder) included.
    env = {**git_env(), "MLFLOW_TRACKING_URI": resolve_tracking_uri(workspace=root)}
    with subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                stage = _RAN.search(line)
                if stage:
                    marks.append((stage.group(1), time.perf_counter()))
                if on_line:
                    on_line(line.rstrip("\n"))
            code = proc.wait()
        except KeyboardInterrupt:
            _stop_dvc(proc)
            raise
    ended = time.perf_counter()
    seconds = ended - started
    stage_seconds = {
        name: round((marks[i + 1][1] if i + 1 < len(marks) else ended) - at, 1) for i, (name, at) in enumerate(marks)
    }
    text = "\n".join(lines)
    if code != 0:
        tail = "\n".join(line for line in lines[-15:] if line.strip())
        raise RadflowError(f"the pipeline failed (dvc exp run exited {code}) in {root}:\n{tail}")
    ran = _RAN.findall(text)
    skipped = [s for s in _SKIPPED.findall(text) if s not in ran]
    experiment = None
    for match in _EXP.finditer(text):
        experiment = match.group(1) or match.group(2)
    baseline = commit_first_run(root)
    stamp = root / SIGNATURE_FILE
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"signature": pipeline_signature(root)}))
    result = {**_result(root, ran, skipped, experiment, seconds), "stage_seconds": stage_seconds}
    return {**result, "baseline_commit": baseline}
