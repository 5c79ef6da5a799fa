"""Registration: a run's model becomes a new version, tagged with its lineage and gated.

Passing versions get the alias ``challenger``; failing ones stay registered without an alias,
tagged ``gate=failed`` with the reasons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from radflow.config import GateConfig
from radflow.errors import NotFoundError
from radflow.modelref import CHALLENGER, CHAMPION, DATASET_VERSION_TAG, get_run
from radflow.registry.client import alias_version, open_client
from radflow.registry.comparison import fetch_paired
from radflow.registry.gates import EVAL_DATASET_TAG, EVAL_HELD_OUT_TAG, check_gates, eval_version, gate_family

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["GATE_TAG", "HEADLINE_METRICS", "LINEAGE_TAGS", "register", "registration_summary"]

GATE_TAG = "gate"
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
    "test_mean_dice",
    "test_mean_dice_ci_low",
    "test_mean_dice_ci_high",
    "test_map50",
    "test_map50_ci_low",
    "test_map50_ci_high",
    "test_map",
    "test_froc_cpm",
    "test_image_auroc",
)
LINEAGE_TAGS = (
    DATASET_VERSION_TAG,
    "radflow.dataset_path",
    "radflow.git_commit",
    "radflow.git_dirty",
    "radflow.task",
)


def _model_source(client: MlflowClient, run: Run) -> tuple[str, str | None]:
    """(source URI, logged-model id) of the run's ``model``: an MLflow 3 logged model or a run artifact."""
    outputs = getattr(run, "outputs", None)
    for output in getattr(outputs, "model_outputs", None) or []:
        logged = client.get_logged_model(output.model_id)
        if logged.name == "model":
            return f"models:/{logged.model_id}", logged.model_id  # MLflow's logged-model URI, not a registry name
    if any(a.path == "model/MLmodel" for a in client.list_artifacts(run.info.run_id, "model")):
        return f"{run.info.artifact_uri}/model", None
    raise NotFoundError(
        f"run {run.info.run_id} has no logged model named 'model'; register runs made by `radflow train`."
    )


def _champion_info(client: MlflowClient, name: str, uri: str, exclude: str) -> dict[str, Any] | None:
    champ = alias_version(client, name, CHAMPION, uri)
    if champ is None or str(champ.version) == exclude or not champ.run_id:
        return None
    run = client.get_run(champ.run_id)
    return {
        "version": str(champ.version),
        "run_id": str(champ.run_id),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def register(
    run_id: str, name: str, gates: GateConfig | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Register ``runs:/RUN_ID/model`` as a new version of ``name`` and apply the quality gates.

    Returns ``{"name", "version", "run_id", "passed", "alias", "failures", "checks", "notes",
    "not_gated", "champion", "tags"}``. The champion comparison is a paired test on both runs'
    logged per-image test predictions (:mod:`radflow.registry.comparison`) when both have them.
    A failing version stays registered, without alias, tagged ``gate=failed``.
    """
    from mlflow.exceptions import MlflowException

    gates = gates or GateConfig()
    client, uri = open_client(tracking_uri)
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
    paired, paired_note = None, None
    # Only worth a download when the gates will compare (same test split); they say why not otherwise.
    split = eval_version(run_tags)
    if (
        champion is not None
        and split is not None
        and split == eval_version(champion["tags"])
        and gate_family(metrics, run_tags) in ("classification", "detection", "segmentation")
    ):
        paired, paired_note = fetch_paired(client, run_id, champion)
    outcome = check_gates(metrics, run_tags, gates, champion, paired, paired_note)
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
        "not_gated": outcome["not_gated"],
        "champion": champion["version"] if champion else None,
        "tags": tags,
        "tracking_uri": uri,
    }


def registration_summary(result: dict[str, Any], run_id: str) -> dict[str, Any]:
    """What a registration leaves for people and scripts (the register stage's registration.json, sweep.json):
    the version, its verdict and alias, the gates' failures and checks as sentences, the champion compared with."""
    return {
        "name": result["name"],
        "version": result["version"],
        "run_id": run_id,
        "passed": result["passed"],
        "alias": result["alias"],
        "failures": [f["message"] for f in result["failures"]],
        "checks": [c["message"] for c in result["checks"]],
        "champion": result["champion"],
        "notes": result["notes"],
    }
