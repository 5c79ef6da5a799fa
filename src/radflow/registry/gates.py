"""Quality gates: whether a run's test metrics may make it ``@challenger``; pure (no MLflow calls).

Absolute gates (macro AUROC, or MAE for regression) always apply. A candidate is compared with the
champion label by label (or on MAE) only on the same test split, i.e. when both were evaluated on
the same dataset version; otherwise the comparison is skipped and a note says why.
"""

from __future__ import annotations

from typing import Any

from radflow.config import GateConfig
from radflow.modelref import DATASET_VERSION_TAG
from radflow.tasks import get_task, list_tasks

__all__ = ["EVAL_DATASET_TAG", "EVAL_HELD_OUT_TAG", "EVAL_SPLIT_TAG", "check_gates"]

EVAL_DATASET_TAG = "radflow.eval_dataset_version"
"""Run tag: dataset version whose split the test metrics were computed on (set by the evaluation)."""
EVAL_SPLIT_TAG = "radflow.eval_split"
EVAL_HELD_OUT_TAG = "radflow.eval_held_out_version"
"""Run tag: content hash of the test split itself (radflow.data.split.held_out_version); set by the
pipeline's evaluate stage. Models trained on more data (feedback) keep it, so they stay comparable."""
_LABEL_AUROC = "test_auroc_"


def _eval_version(tags: dict[str, str]) -> str | None:
    # Runs evaluated by radflow carry the evaluated dataset version; older ones only the training one,
    # which is the dataset whose test split the loop evaluates.
    # The test split's own hash when known: a dataset grown by training-only rows keeps the same test set.
    return tags.get(EVAL_HELD_OUT_TAG) or tags.get(EVAL_DATASET_TAG) or tags.get(DATASET_VERSION_TAG)


def _family(metrics: dict[str, float], tags: dict[str, str]) -> str:
    """Whose gates apply: the family of the run's task, else of the kind whose first gate metric the run logged.

    A run with neither is judged as classification, whose failing AUROC gate says to evaluate it first.
    The version is registered before the gates run, so a task this radflow does not know is not an error here.
    """
    task = tags.get("radflow.task")
    if task in list_tasks():
        return get_task(task).family
    for name in list_tasks():
        kind = get_task(name)
        if kind.gate_metrics and kind.gate_metrics[0] in metrics:
            return kind.family
    return "classification"


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

    family = _family(metrics, tags)
    if family == "regression":
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
        elif family == "regression":
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
