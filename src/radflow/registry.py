"""The model registry: gated registration, champion/challenger aliases, rollback, and model lookup.

A thin layer over the MLflow Model Registry (``MlflowClient``, aliases API):

* :func:`register` adds a run's model as a new version, tags it with its lineage (dataset version,
  git commit, headline test metrics) and applies the quality gates of :class:`GateConfig`. Passing
  versions get the alias ``challenger``; failing ones stay registered without an alias, tagged
  ``gate=failed`` with the reasons.
* :func:`promote` moves ``champion`` and pushes the previous champion onto a stack kept in the
  registered-model tag ``radflow.previous_champion``; :func:`rollback` pops it, so repeated
  rollbacks walk back through earlier champions.
* :func:`resolve_model` turns any MODEL argument (checkpoint path, run id, ``runs:/``,
  ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) into a local checkpoint file, through the one
  parser and resolver of :mod:`radflow.modelref`.

Gates compare a candidate with the champion only on the same test split, i.e. when both were
evaluated on the same dataset version; otherwise the comparison is skipped and a note says why.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radflow.config import GateConfig
from radflow.errors import NotFoundError, RadflowError
from radflow.modelref import (
    CHALLENGER,
    CHAMPION,
    CHECKPOINT_ARTIFACT,
    DATASET_VERSION_TAG,
    get_run,
    get_version,
    registered_model,
    resolve_model_ref,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CHECKPOINT_ARTIFACT",
    "EVAL_DATASET_TAG",
    "EVAL_HELD_OUT_TAG",
    "EVAL_SPLIT_TAG",
    "PREVIOUS_CHAMPION_TAG",
    "check_gates",
    "promote",
    "register",
    "resolve_model",
    "resolve_model_run",
    "rollback",
]

PREVIOUS_CHAMPION_TAG = "radflow.previous_champion"
GATE_TAG = "gate"
EVAL_DATASET_TAG = "radflow.eval_dataset_version"
"""Run tag: dataset version whose split the test metrics were computed on (set by the evaluation)."""
EVAL_SPLIT_TAG = "radflow.eval_split"
EVAL_HELD_OUT_TAG = "radflow.eval_held_out_version"
"""Run tag: content hash of the test split itself (radflow.data.split.held_out_version); set by the
pipeline's evaluate stage. Models trained on more data (feedback) keep it, so they stay comparable."""
# Run-level numbers copied onto every version so the registry UI shows them without opening the run.
HEADLINE_METRICS = (
    "test_macro_auroc",
    "test_macro_auroc_ci_low",
    "test_macro_auroc_ci_high",
    "test_micro_auroc",
    "test_macro_auprc",
    "test_ece",
    "test_accuracy",
    "test_mae",
    "test_mae_ci_low",
    "test_mae_ci_high",
    "test_rmse",
)
LINEAGE_TAGS = (
    DATASET_VERSION_TAG,
    "radflow.dataset_path",
    "radflow.git_commit",
    "radflow.git_dirty",
    "radflow.task",
)
_LABEL_AUROC = "test_auroc_"


def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    from radflow.tracking import client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return client(uri), uri


def _alias_version(client: MlflowClient, name: str, alias: str, uri: str) -> ModelVersion | None:
    aliases = dict(registered_model(client, name, uri).aliases or {})
    if alias not in aliases:
        return None
    return client.get_model_version(name, str(aliases[alias]))


# ---------------------------------------------------------------------------------------------
# Gates


def _eval_version(tags: dict[str, str]) -> str | None:
    # Runs evaluated by radflow carry the evaluated dataset version; older ones only the training one,
    # which is the dataset whose test split the loop evaluates.
    # The test split's own hash when known: a dataset grown by training-only rows keeps the same test set.
    return tags.get(EVAL_HELD_OUT_TAG) or tags.get(EVAL_DATASET_TAG) or tags.get(DATASET_VERSION_TAG)


def _task(metrics: dict[str, float], tags: dict[str, str]) -> str:
    if tags.get("radflow.task"):
        return tags["radflow.task"]
    return "regression" if "test_mae" in metrics else "multilabel"


def check_gates(
    metrics: dict[str, float],
    tags: dict[str, str],
    gates: GateConfig,
    champion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply quality gates to a run's test metrics; pure (no MLflow calls).

    ``champion`` is ``{"version", "metrics", "tags"}`` of the current champion, or ``None``.
    Returns ``{"passed", "checks": [...], "failures": [...], "notes": [...]}``; each check is
    ``{"gate", "metric", "value", "limit", "passed", "message"}``.
    """
    checks: list[dict[str, Any]] = []
    notes: list[str] = []

    def check(gate: str, metric: str, value: float | None, limit: float, ok: bool, message: str) -> None:
        checks.append(
            {"gate": gate, "metric": metric, "value": value, "limit": limit, "passed": ok, "message": message}
        )

    task = _task(metrics, tags)
    if task == "regression":
        mae = metrics.get("test_mae")
        if mae is None:
            check(
                "max_mae_months",
                "test_mae",
                None,
                gates.max_mae_months or 0.0,
                False,
                "the run has no test_mae metric; evaluate it first (`radflow evaluate RUN_ID --log`).",
            )
        elif gates.max_mae_months is not None:
            ok = mae <= gates.max_mae_months
            check(
                "max_mae_months",
                "test_mae",
                mae,
                gates.max_mae_months,
                ok,
                f"test_mae {mae:.3f} {'<=' if ok else '>'} max_mae_months {gates.max_mae_months:g}",
            )
    else:
        auroc = metrics.get("test_macro_auroc")
        if auroc is None:
            check(
                "min_macro_auroc",
                "test_macro_auroc",
                None,
                gates.min_macro_auroc,
                False,
                "the run has no test_macro_auroc metric; evaluate it first (`radflow evaluate RUN_ID --log`).",
            )
        else:
            ok = auroc >= gates.min_macro_auroc
            check(
                "min_macro_auroc",
                "test_macro_auroc",
                auroc,
                gates.min_macro_auroc,
                ok,
                f"test_macro_auroc {auroc:.4f} {'>=' if ok else '<'} min_macro_auroc {gates.min_macro_auroc:g}",
            )

    if champion is not None:
        mine, theirs = _eval_version(tags), _eval_version(champion["tags"])
        label = f"champion v{champion['version']}"
        if mine is None or mine != theirs:
            notes.append(
                f"{label} was evaluated on dataset version {theirs or 'unknown'}, this run on {mine or 'unknown'}; "
                "the comparison with the champion was skipped (it is only meaningful on the same test split)."
            )
        elif task == "regression":
            mae, champ_mae = metrics.get("test_mae"), champion["metrics"].get("test_mae")
            if mae is not None and champ_mae is not None:
                rise = mae - champ_mae
                ok = rise <= gates.max_mae_increase + 1e-9
                check(
                    "max_mae_increase",
                    "test_mae",
                    mae,
                    champ_mae + gates.max_mae_increase,
                    ok,
                    f"test_mae {mae:.3f} is {rise:+.3f} vs {label} ({champ_mae:.3f}); "
                    f"max_mae_increase {gates.max_mae_increase:g}",
                )
        else:
            for key, champ_value in sorted(champion["metrics"].items()):
                if not key.startswith(_LABEL_AUROC):
                    continue
                value = metrics.get(key)
                if value is None:
                    notes.append(f"{label} has {key} but this run does not; that label was not compared.")
                    continue
                drop = champ_value - value
                ok = drop <= gates.max_label_drop + 1e-9
                message = f"{key} {value:.4f} vs {label} {champ_value:.4f}"
                if not ok:
                    message = (
                        f"{key} {value:.4f} is {drop:.4f} below {label} ({champ_value:.4f}); "
                        f"max_label_drop {gates.max_label_drop:g}"
                    )
                check("max_label_drop", key, value, champ_value - gates.max_label_drop, ok, message)
    elif not notes:
        notes.append("no champion yet; only the absolute gates apply.")
    failures = [c for c in checks if not c["passed"]]
    return {"passed": not failures, "checks": checks, "failures": failures, "notes": notes}


# ---------------------------------------------------------------------------------------------
# Register / promote / rollback


def _model_source(client: MlflowClient, run: Run) -> tuple[str, str | None]:
    """(source URI, logged-model id) of the run's ``model``: an MLflow 3 logged model or a run artifact."""
    outputs = getattr(run, "outputs", None)
    for output in getattr(outputs, "model_outputs", None) or []:
        logged = client.get_logged_model(output.model_id)
        if logged.name == "model":
            return f"models:/{logged.model_id}", logged.model_id
    if any(a.path == "model/MLmodel" for a in client.list_artifacts(run.info.run_id, "model")):
        return f"{run.info.artifact_uri}/model", None
    raise NotFoundError(
        f"run {run.info.run_id} has no logged model named 'model'; register runs made by `radflow train`."
    )


def _champion_info(client: MlflowClient, name: str, uri: str, exclude: str) -> dict[str, Any] | None:
    champ = _alias_version(client, name, CHAMPION, uri)
    if champ is None or str(champ.version) == exclude or not champ.run_id:
        return None
    run = client.get_run(champ.run_id)
    return {"version": str(champ.version), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


def register(
    run_id: str, name: str, gates: GateConfig | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Register ``runs:/RUN_ID/model`` as a new version of ``name`` and apply the quality gates.

    Returns ``{"name", "version", "run_id", "passed", "alias", "failures", "checks", "notes",
    "champion", "tags"}``. A failing version stays registered, without alias, tagged ``gate=failed``.
    """
    from mlflow.exceptions import MlflowException

    gates = gates or GateConfig()
    client, uri = _client(tracking_uri)
    run = get_run(client, run_id, uri)
    source, model_id = _model_source(client, run)
    metrics, run_tags = dict(run.data.metrics), dict(run.data.tags)
    try:
        client.create_registered_model(name, description="radflow model; aliases champion / challenger.")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {key: run_tags[key] for key in LINEAGE_TAGS if key in run_tags}
    for key in (EVAL_DATASET_TAG, EVAL_HELD_OUT_TAG):
        if key in run_tags:
            tags[key] = run_tags[key]
    tags.update({key: f"{metrics[key]:.4f}" for key in HEADLINE_METRICS if key in metrics})
    version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
    number = str(version.version)
    champion = _champion_info(client, name, uri, exclude=number)
    outcome = check_gates(metrics, run_tags, gates, champion)
    client.set_model_version_tag(name, number, GATE_TAG, "passed" if outcome["passed"] else "failed")
    if outcome["failures"]:
        reasons = "; ".join(f["message"] for f in outcome["failures"])
        client.set_model_version_tag(name, number, "gate_failures", reasons[:4900])
    else:
        client.set_registered_model_alias(name, CHALLENGER, number)
    return {
        "name": name,
        "version": number,
        "run_id": run_id,
        "source": source,
        "passed": outcome["passed"],
        "alias": CHALLENGER if outcome["passed"] else None,
        "failures": outcome["failures"],
        "checks": outcome["checks"],
        "notes": outcome["notes"],
        "champion": champion["version"] if champion else None,
        "tags": tags,
        "tracking_uri": uri,
    }


def _history(model: Any) -> list[str]:
    raw = (model.tags or {}).get(PREVIOUS_CHAMPION_TAG, "")
    try:
        value = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        value = [v for v in raw.split(",") if v]
    return [str(v) for v in value]


def promote(name: str, version: str | int, tracking_uri: str | None = None, *, force: bool = False) -> dict[str, Any]:
    """Make ``version`` the champion; the previous champion is pushed onto the rollback stack.

    A version that failed its gates is refused unless ``force``. Promoting the current champion
    changes nothing. Promoting the challenger also removes its ``challenger`` alias.
    """
    client, uri = _client(tracking_uri)
    target = get_version(client, name, version, uri)
    number = str(target.version)
    if (target.tags or {}).get(GATE_TAG) == "failed" and not force:
        reasons = (target.tags or {}).get("gate_failures", "see the version's tags")
        raise RadflowError(
            f"{name} version {number} failed its quality gates ({reasons}); pass --force to promote it anyway."
        )
    model = registered_model(client, name, uri)
    aliases = dict(model.aliases or {})
    previous = str(aliases[CHAMPION]) if CHAMPION in aliases else None
    history = _history(model)
    changed = previous != number
    if changed:
        if previous is not None:
            history.append(previous)
            client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, json.dumps(history))
        client.set_registered_model_alias(name, CHAMPION, number)
        client.set_model_version_tag(
            name, number, "radflow.promoted_at", datetime.now(UTC).isoformat(timespec="seconds")
        )
    if str(aliases.get(CHALLENGER, "")) == number:
        client.delete_registered_model_alias(name, CHALLENGER)
    return {"name": name, "version": number, "previous": previous, "changed": changed, "history": history}


def rollback(name: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Give ``champion`` back to the version that held it before the last promote."""
    from mlflow.exceptions import MlflowException

    client, uri = _client(tracking_uri)
    model = registered_model(client, name, uri)
    history = _history(model)
    current = (model.aliases or {}).get(CHAMPION)
    while history:
        candidate = history.pop()
        try:
            client.get_model_version(name, candidate)
        except MlflowException:
            continue  # that version was deleted since; fall back to the one before it
        client.set_registered_model_alias(name, CHAMPION, candidate)
        client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, json.dumps(history))
        return {
            "name": name,
            "version": candidate,
            "replaced": None if current is None else str(current),
            "history": history,
        }
    client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, "[]")
    raise RadflowError(
        f"nothing to roll back: {name} has no previous champion"
        + (f" (champion is version {current})" if current is not None else "")
        + ". Rollback restores the champion that a `radflow promote` replaced."
    )


# ---------------------------------------------------------------------------------------------
# Model lookup


def resolve_model_run(uri: str, tracking_uri: str | None = None) -> tuple[Path, str | None]:
    """Like :func:`resolve_model`, also returning the MLflow run id (``None`` for a local file)."""
    resolved = resolve_model_ref(uri, tracking_uri)
    return resolved.checkpoint(), resolved.run_id


def resolve_model(uri: str, tracking_uri: str | None = None) -> Path:
    """A local checkpoint for a path, run id, ``runs:/ID``, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Registry and run models are downloaded (their ``checkpoint/best.pt`` artifact) into a cache
    folder under the system temp directory; unknown runs, models and aliases raise NotFoundError.
    """
    return resolve_model_run(uri, tracking_uri)[0]
