"""Lineage of a registered model: the git commit, DVC data hashes, dataset version and params behind it.

The register stage calls :func:`record_lineage` while the pipeline runs: it reads the hashes DVC
has written to ``dvc.lock`` for the stages before it, notes the git state (a dirty tree is allowed
and recorded as dirty) and the DVC experiment, and stores all of it on the model version (tags
for the headline fields, ``lineage/lineage.json`` on the run for the rest). :func:`show_lineage`
reads it back for ``radflow lineage models:/NAME@champion``, with the commands that rebuild it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from radflow.config import Params, flatten_params
from radflow.errors import NotFoundError
from radflow.modelref import ArtifactNotFoundError, model_uri, parse_model_ref, resolve_model_ref

__all__ = ["LINEAGE_ARTIFACT", "lock_hashes", "record_lineage", "reproduce_commands", "show_lineage"]

LINEAGE_ARTIFACT = "lineage/lineage.json"
_TAG = "radflow.lineage."


def lock_hashes(root: Path) -> dict[str, dict[str, str]]:
    """``{stage: {out path: md5}}`` from ``dvc.lock``, plus ``{".dvc": {path: md5}}`` for ``dvc add``-ed data."""
    out: dict[str, dict[str, str]] = {}
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage, entry in stages.items():
            out[stage] = {o["path"]: str(o.get("md5", "")) for o in entry.get("outs", [])}
    added: dict[str, str] = {}
    for dvcfile in sorted(root.glob("data/*.dvc")):
        for o in (yaml.safe_load(dvcfile.read_text()) or {}).get("outs", []):
            added[str(Path("data") / o["path"])] = str(o.get("md5", ""))
    if added:
        out[".dvc"] = added
    return out


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _stage_outputs(root: Path) -> list[str]:
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    paths: list[str] = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return paths


def _dirty_files(root: Path) -> list[str]:
    """Tracked files changed since the commit, not counting what DVC writes (dvc.lock, .gitignore, stage outputs).

    ``dvc exp run`` stages the uncached outputs (metrics, plots) as it goes; those are results, not edits.
    """
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    changed = [line[3:].strip() for line in status.splitlines() if line.strip()]
    outputs = _stage_outputs(root)
    return [
        p
        for p in changed
        if Path(p).name not in ("dvc.lock", ".gitignore") and not any(p == o or p.startswith(o + "/") for o in outputs)
    ]


def _committed_params(root: Path, commit: str) -> Params | None:
    from radflow.config import validate_params

    text = _git(root, "show", f"{commit}:params.yaml") if commit else ""
    if not text:
        return None
    try:
        return validate_params(yaml.safe_load(text) or {}, f"{commit}:params.yaml")
    except Exception:  # an old commit with params radflow no longer reads: no -S list then
        return None


def reproduce_commands(commit: str, sets: list[str], experiment: str | None) -> list[str]:
    """The commands that rebuild a model: check out its commit, fetch its data, rerun with its params."""
    commands = [f"git checkout {commit}"]
    commands.append("dvc pull  # raw data and cached stage outputs from the DVC remote")
    commands.append(" ".join(["radflow run", *(f"-S {s}" for s in sets)]))
    if experiment:
        commands.append(f"# or restore the experiment's results directly: dvc exp apply {experiment}")
    return commands


def record_lineage(root: Path, params: Params, name: str, version: str, run_id: str) -> dict[str, Any]:
    """Collect the lineage of model ``name`` ``version`` (trained by ``run_id``) and store it in MLflow."""
    from radflow.data.dataset import Dataset
    from radflow.data.split import EXTRA_SPLIT, held_out_version
    from radflow.pipeline.dvc_yaml import SPLIT_DATASET
    from radflow.tracking import client, git_state, resolve_tracking_uri

    commit, _ = git_state(root)
    dirty_files = _dirty_files(root)
    dirty = bool(dirty_files)
    experiment = os.environ.get("DVC_EXP_NAME") or None
    committed = _committed_params(root, commit)
    mine = flatten_params(params)
    sets = []
    if committed is not None:
        before = flatten_params(committed)
        sets = [f"{k}={v}" for k, v in mine.items() if before.get(k) != v]
    dataset = Dataset.open(root / SPLIT_DATASET)
    lineage: dict[str, Any] = {
        "model": model_uri(name, version=version),
        "run_id": run_id,
        "git": {
            "commit": commit,
            "dirty": dirty,
            "dirty_files": dirty_files,
            "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"),
        },
        "dvc_experiment": experiment,
        "dvc_baseline": os.environ.get("DVC_EXP_BASELINE_REV") or None,
        "dataset": {
            "version": dataset.version,
            "task": dataset.task,
            # The test split's own hash: unchanged when training data (e.g. feedback) is added.
            "held_out_version": held_out_version(dataset),
            "extra_train_images": int((dataset.manifest["official_split"] == EXTRA_SPLIT).sum()),
            "extra_sources": list(params.data.extra),
        },
        # The register stage's own entry is from the previous run; it is being rewritten now.
        "data_hashes": {k: v for k, v in lock_hashes(root).items() if k != "register"},
        "params": params.model_dump(mode="json"),
        "params_changed": sets,
        "workspace": str(root),
        "reproduce": reproduce_commands(commit, sets, experiment),
    }
    mlflow = client(resolve_tracking_uri())
    mlflow.log_text(run_id, json.dumps(lineage, indent=2), LINEAGE_ARTIFACT)
    tags = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "dataset_version": dataset.version,
        "dvc_experiment": experiment or "",
        "workspace": str(root),
    }
    for key, value in tags.items():
        mlflow.set_model_version_tag(name, version, _TAG + key, value)
    return lineage


def show_lineage(model: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The lineage recorded for ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    ref = parse_model_ref(model)
    if not ref.in_registry:
        raise NotFoundError(f"{ref.text!r}: lineage is recorded for registered models; give models:/NAME@ALIAS or /N.")
    resolved = resolve_model_ref(ref, tracking_uri)
    try:
        raw = resolved.download(LINEAGE_ARTIFACT).read_text()
    except ArtifactNotFoundError:
        raise NotFoundError(
            f"{resolved.describe()} has no recorded lineage; models registered by a workspace pipeline "
            "(`radflow run`) have one."
        ) from None
    lineage: dict[str, Any] = json.loads(raw)
    lineage["model"] = resolved.uri
    lineage["asked"] = ref.text
    lineage["aliases"] = list(resolved.aliases)
    return lineage
