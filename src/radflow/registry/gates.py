"""Quality gates: whether a run's test metrics may make it ``@challenger``; pure (no MLflow calls).

Absolute gates (macro AUROC, MAE for regression, mean and per-structure Dice for segmentation) always
apply; the family of the run's task kind picks them, and a family radflow has no gates for fails
rather than passing unjudged. A candidate is compared with the champion label by label (or on MAE) only on the same
test split, i.e. when both were evaluated on the same dataset version; otherwise the comparison is
skipped and a note says why.

A label is compared only when the test images hold at least ``gates.min_positives`` positives and
``gates.min_negatives`` negatives of it; below that it is reported "not gated", because an AUROC
over one positive image is that image's rank, not a property of the model. When both runs logged
their per-image test scores (:class:`PairedScores`), the comparison is a paired test on the images
both scored (a bootstrap over patients, or DeLong's test): a label fails only when its drop is
larger than ``max_label_drop`` *and* the interval of the difference lies below zero, so noise alone
never fails a model. Without them it falls back to the two point estimates, and a note says so.
Segmentation is judged alike: with both runs' per-image Dice (:class:`PairedDice`) a structure fails
``max_dice_drop`` only when its mean Dice drop on the same images exceeds it and the patient-level
bootstrap interval of the difference lies below zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from radflow.config import GateConfig
from radflow.modelref import DATASET_VERSION_TAG
from radflow.tasks import get_task, list_tasks, metric_key

__all__ = [
    "EVAL_DATASET_TAG",
    "EVAL_HELD_OUT_TAG",
    "EVAL_SPLIT_TAG",
    "PairedBoxes",
    "PairedDice",
    "PairedScores",
    "check_gates",
    "eval_version",
    "gate_family",
]

EVAL_DATASET_TAG = "radflow.eval_dataset_version"
"""Run tag: dataset version whose split the test metrics were computed on (set by the evaluation)."""
EVAL_SPLIT_TAG = "radflow.eval_split"
EVAL_HELD_OUT_TAG = "radflow.eval_held_out_version"
"""Run tag: content hash of the test split itself (radflow.data.split.held_out_version); set by the
pipeline's evaluate stage. Models trained on more data (feedback) keep it, so they stay comparable."""
_LABEL_AUROC = "test_auroc_"


@dataclass
class PairedScores:
    """Both models' test scores on the images both scored, in the same row order."""

    labels: list[str]
    targets: np.ndarray
    """``(n, L)`` 1/0/NaN."""
    candidate: np.ndarray
    champion: np.ndarray
    groups: np.ndarray
    """Each image's (pseudonymous) patient: the bootstrap resamples patients."""


@dataclass
class PairedDice:
    """Both segmentation models' per-image test Dice on the images both scored, in the same row order."""

    structures: list[str]
    candidate: np.ndarray
    """``(n, K)`` Dice per image and structure; NaN where undefined (neither shown nor predicted)."""
    champion: np.ndarray
    groups: np.ndarray
    """Each image's (pseudonymous) patient: the bootstrap resamples patients."""


@dataclass
class PairedBoxes:
    """Both detection models' test boxes on the images both scored, in the same image order."""

    labels: list[str]
    truths: list[np.ndarray]
    """Per image ``(n, 5)`` ``[x0, y0, x1, y1, label_index]``."""
    candidate: list[np.ndarray]
    """Per image ``(m, 6)`` ``[x0, y0, x1, y1, label_index, score]``."""
    champion: list[np.ndarray]
    groups: np.ndarray
    """Each image's (pseudonymous) patient: the bootstrap resamples patients."""


def eval_version(tags: dict[str, str]) -> str | None:
    """The test split a run was evaluated on, as comparable across runs (``None`` when unknown)."""
    # Runs evaluated by radflow carry the evaluated dataset version; older ones only the training one,
    # which is the dataset whose test split the loop evaluates.
    # The test split's own hash when known: a dataset grown by training-only rows keeps the same test set.
    return tags.get(EVAL_HELD_OUT_TAG) or tags.get(EVAL_DATASET_TAG) or tags.get(DATASET_VERSION_TAG)


def gate_family(metrics: dict[str, float], tags: dict[str, str]) -> str:
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


def _too_few(positives: int | None, negatives: int | None, gates: GateConfig) -> bool:
    if positives is None or negatives is None:
        return False
    return positives < gates.min_positives or negatives < gates.min_negatives


def _not_gated(label: str, metric: str, positives: int, negatives: int, gates: GateConfig) -> dict[str, Any]:
    return {
        "label": label,
        "metric": metric,
        "positives": positives,
        "negatives": negatives,
        "message": f"{label}: not gated: n={positives} positive(s), {negatives} negative(s) on the test images "
        f"(gates.min_positives {gates.min_positives}, min_negatives {gates.min_negatives}).",
    }


def _paired_label_checks(
    paired: PairedScores, gates: GateConfig, label_name: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(checks, not gated) of the per-label paired comparison with the champion."""
    from radflow.metrics.paired import class_counts, delong_auroc, paired_bootstrap_auroc

    checks: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for j, label in enumerate(paired.labels):
        metric = f"test_auroc_{metric_key(label)}"
        y = paired.targets[:, j]
        positives, negatives = class_counts(y)
        if _too_few(positives, negatives, gates):
            skipped.append(_not_gated(label, metric, positives, negatives, gates))
            continue
        if gates.comparison == "delong":
            test = delong_auroc(y, paired.champion[:, j], paired.candidate[:, j], ci=gates.comparison_ci)
        else:
            test = paired_bootstrap_auroc(
                y,
                paired.champion[:, j],
                paired.candidate[:, j],
                paired.groups,
                n_bootstrap=gates.comparison_bootstrap,
                ci=gates.comparison_ci,
            )
        diff, interval = test["diff"], test["ci"]
        if diff is None:
            continue
        drop = -diff
        worse = interval is not None and interval[1] is not None and interval[1] < 0
        ok = not (drop > gates.max_label_drop + 1e-9 and worse)
        ci_text = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "[-]"
        p_text = f", p {test['p_value']:.3g}" if test.get("p_value") is not None else ""
        message = (
            f"{metric} {test['auroc_b']:.4f} vs {label_name} {test['auroc_a']:.4f} on the same {test['n']} images: "
            f"difference {diff:+.4f}, {gates.comparison_ci:.0%} CI {ci_text}{p_text} ({test['method']})"
        )
        if not ok:
            message += f"; the drop exceeds max_label_drop {gates.max_label_drop:g} and is not noise"
        checks.append(
            {
                "gate": "max_label_drop",
                "metric": metric,
                "value": test["auroc_b"],
                "limit": test["auroc_a"] - gates.max_label_drop,
                "passed": ok,
                "message": message,
                "comparison": test,
            }
        )
    return checks, skipped


def _count(metrics: dict[str, float], kind: str, key: str) -> int | None:
    value = metrics.get(f"test_{kind}_{key}")
    return None if value is None else int(value)


_DICE = "test_dice_"


def _dice_checks(metrics: dict[str, float], gates: GateConfig, notes: list[str]) -> list[dict[str, Any]]:
    """Segmentation's absolute gates: mean Dice, and each structure ``gates.min_dice`` names."""
    out: list[dict[str, Any]] = []
    mean = metrics.get("test_mean_dice")
    limit = gates.min_mean_dice
    if mean is None:
        message = "the run has no test_mean_dice metric; evaluate it first (`radflow evaluate RUN_ID --log`)."
        out.append(_gate("min_mean_dice", "test_mean_dice", None, limit, False, message))
    else:
        ok = mean >= limit
        message = f"test_mean_dice {mean:.4f} {'>=' if ok else '<'} min_mean_dice {limit:g}"
        out.append(_gate("min_mean_dice", "test_mean_dice", mean, limit, ok, message))
    logged = sorted(k.removeprefix(_DICE) for k in metrics if k.startswith(_DICE))
    for structure, minimum in gates.min_dice.items():
        key = _DICE + metric_key(structure)
        value = metrics.get(key)
        if value is None or math.isnan(value):
            known = f"; structures with a Dice: {', '.join(logged)}" if logged else ""
            out.append(
                _gate(
                    "min_dice",
                    key,
                    None,
                    minimum,
                    False,
                    f"gates.min_dice names {structure!r}, but the run has no Dice for it (in no test mask?){known}.",
                )
            )
            continue
        ok = value >= minimum
        out.append(_gate("min_dice", key, value, minimum, ok, f"{key} {value:.4f} {'>=' if ok else '<'} {minimum:g}"))
    if not gates.min_dice:
        notes.append("no per-structure Dice minimum set (gates.min_dice); only the mean Dice is gated.")
    return out


def _paired_dice_checks(paired: PairedDice, gates: GateConfig, label: str) -> list[dict[str, Any]]:
    """Per structure: the candidate's mean Dice minus the champion's on the same images, with its bootstrap CI."""
    from radflow.metrics.paired import paired_bootstrap_dice

    out: list[dict[str, Any]] = []
    for j, structure in enumerate(paired.structures):
        key = f"{_DICE}{metric_key(structure)}"
        test = paired_bootstrap_dice(
            paired.champion[:, j],
            paired.candidate[:, j],
            paired.groups,
            n_bootstrap=gates.comparison_bootstrap,
            ci=gates.comparison_ci,
        )
        diff, interval = test["diff"], test["ci"]
        if diff is None:
            continue
        worse = interval is not None and interval[1] is not None and interval[1] < 0
        ok = not (-diff > gates.max_dice_drop + 1e-9 and worse)
        ci_text = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "[-]"
        message = (
            f"{key} {test['dice_b']:.4f} vs {label} {test['dice_a']:.4f} on the same {test['n']} images: "
            f"difference {diff:+.4f}, {gates.comparison_ci:.0%} CI {ci_text} ({test['method']})"
        )
        if not ok:
            message += f"; the drop exceeds max_dice_drop {gates.max_dice_drop:g} and is not noise"
        check = _gate("max_dice_drop", key, test["dice_b"], test["dice_a"] - gates.max_dice_drop, ok, message)
        out.append({**check, "comparison": test})
    return out


def _dice_drop_checks(
    metrics: dict[str, float],
    champion: dict[str, float],
    gates: GateConfig,
    label: str,
    notes: list[str],
    paired: PairedDice | None = None,
    paired_note: str | None = None,
) -> list[dict[str, Any]]:
    """No structure's Dice more than ``gates.max_dice_drop`` below the champion's on the same test split.

    A paired test on both runs' per-image Dice when given; else the two point estimates, with a note.
    """
    if paired is not None:
        return _paired_dice_checks(paired, gates, label)
    out: list[dict[str, Any]] = []
    notes.append(
        f"compared with {label} on per-structure Dice point estimates (the same test split), not a paired test: "
        f"{paired_note or 'no per-image test Dice'}."
    )
    for key, champ_value in sorted(champion.items()):
        if not key.startswith(_DICE) or champ_value is None or math.isnan(champ_value):
            continue
        value = metrics.get(key)
        if value is None or math.isnan(value):
            notes.append(f"{label} has {key} but this run does not; that structure was not compared.")
            continue
        drop = champ_value - value
        ok = drop <= gates.max_dice_drop + 1e-9
        message = f"{key} {value:.4f} vs {label} {champ_value:.4f}"
        if not ok:
            message = f"{key} {value:.4f} is {drop:.4f} below {label} ({champ_value:.4f}); "
            message += f"max_dice_drop {gates.max_dice_drop:g}"
        out.append(_gate("max_dice_drop", key, value, champ_value - gates.max_dice_drop, ok, message))
    return out


_MAP50 = "test_map50"
_FROC_CPM = "test_froc_cpm"


def _detection_checks(metrics: dict[str, float], gates: GateConfig, notes: list[str]) -> list[dict[str, Any]]:
    """Detection's absolute gates: mAP50 (``gates.min_map50``) and FROC CPM (``gates.min_froc``), each unless off."""
    out: list[dict[str, Any]] = []
    for gate, key, limit in (("min_map50", _MAP50, gates.min_map50), ("min_froc", _FROC_CPM, gates.min_froc)):
        if limit is None:
            continue
        value = metrics.get(key)
        if value is None or math.isnan(value):
            message = f"the run has no {key} metric; evaluate it first (`radflow evaluate RUN_ID --log`)."
            out.append(_gate(gate, key, None, limit, False, message))
            continue
        ok = value >= limit
        out.append(_gate(gate, key, value, limit, ok, f"{key} {value:.4f} {'>=' if ok else '<'} {gate} {limit:g}"))
    if not out:
        notes.append("gates.min_map50 and gates.min_froc are both off; no absolute detection gate applied.")
    return out


def _map_drop_checks(
    metrics: dict[str, float],
    champion: dict[str, float],
    gates: GateConfig,
    label: str,
    notes: list[str],
    paired: PairedBoxes | None,
    paired_note: str | None,
) -> list[dict[str, Any]]:
    """mAP50 no more than ``gates.max_map_drop`` below the champion's: a paired test on both runs' boxes when given.

    As for AUROC, the paired test fails only a drop beyond the limit whose interval lies below zero.
    """
    if paired is not None:
        from radflow.metrics.detection import paired_map_difference

        test = paired_map_difference(
            paired.champion,
            paired.candidate,
            paired.truths,
            paired.groups,
            len(paired.labels),
            n_boot=gates.comparison_bootstrap,
            ci=gates.comparison_ci,
        )
        diff, interval = test["diff"], test["ci"]
        if diff is None:
            notes.append(f"no test box of any class on the {test['n']} images both runs scored; mAP50 not compared.")
            return []
        worse = interval is not None and interval[1] is not None and interval[1] < 0
        ok = not (-diff > gates.max_map_drop + 1e-9 and worse)
        ci_text = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "[-]"
        p_text = f", p {test['p_value']:.3g}" if test["p_value"] is not None else ""
        message = (
            f"{_MAP50} {test['map_b']:.4f} vs {label} {test['map_a']:.4f} on the same {test['n']} images: difference "
            f"{diff:+.4f}, {gates.comparison_ci:.0%} CI {ci_text}{p_text} ({test['method']})"
        )
        if not ok:
            message += f"; the drop exceeds max_map_drop {gates.max_map_drop:g} and is not noise"
        check = _gate("max_map_drop", _MAP50, test["map_b"], test["map_a"] - gates.max_map_drop, ok, message)
        return [{**check, "comparison": test}]
    value, champ_value = metrics.get(_MAP50), champion.get(_MAP50)
    if value is None or champ_value is None or math.isnan(value) or math.isnan(champ_value):
        notes.append(f"{label} or this run has no {_MAP50}; mAP50 was not compared.")
        return []
    notes.append(
        f"compared with {label} on mAP50 point estimates, not a paired test: "
        f"{paired_note or 'no per-image test boxes'}."
    )
    drop = champ_value - value
    ok = drop <= gates.max_map_drop + 1e-9
    message = f"{_MAP50} {value:.4f} vs {label} {champ_value:.4f}"
    if not ok:
        message = f"{_MAP50} {value:.4f} is {drop:.4f} below {label} ({champ_value:.4f}); "
        message += f"max_map_drop {gates.max_map_drop:g}"
    return [_gate("max_map_drop", _MAP50, value, champ_value - gates.max_map_drop, ok, message)]


def _gate(gate: str, metric: str, value: float | None, limit: float, ok: bool, message: str) -> dict[str, Any]:
    return {"gate": gate, "metric": metric, "value": value, "limit": limit, "passed": ok, "message": message}


def check_gates(
    metrics: dict[str, float],
    tags: dict[str, str],
    gates: GateConfig,
    champion: dict[str, Any] | None = None,
    paired: PairedScores | PairedBoxes | PairedDice | None = None,
    paired_note: str | None = None,
) -> dict[str, Any]:
    """Apply quality gates to a run's test metrics; pure (no MLflow calls).

    ``champion`` is ``{"version", "metrics", "tags"}`` of the current champion, or ``None``;
    ``paired`` both models' scores on the shared test images (:class:`PairedBoxes` for detection,
    :class:`PairedDice` for segmentation;
    ``paired_note`` says why there are none). Returns ``{"passed", "checks": [...], "failures": [...],
    "notes": [...], "not_gated": [...]}``; each check is ``{"gate", "metric", "value", "limit", "passed",
    "message"}`` (a paired one adds ``comparison``), each not-gated label ``{"label", "metric", "positives",
    "negatives", "message"}``.
    """
    checks: list[dict[str, Any]] = []
    notes: list[str] = []
    not_gated: list[dict[str, Any]] = []

    def check(gate: str, metric: str, value: float | None, limit: float, ok: bool, message: str) -> None:
        checks.append(_gate(gate, metric, value, limit, ok, message))

    family = gate_family(metrics, tags)
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
    elif family == "classification":
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
    elif family == "segmentation":
        checks += _dice_checks(metrics, gates, notes)
    elif family == "detection":
        checks += _detection_checks(metrics, gates, notes)
    else:
        # A family without gates is never made challenger unjudged.
        check(
            "gates_defined",
            "-",
            None,
            0.0,
            False,
            f"radflow has no quality gates for {family} models yet; once judged by hand, promote the version with "
            "`radflow promote --force`.",
        )

    if champion is not None:
        mine, theirs = eval_version(tags), eval_version(champion["tags"])
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
        elif family == "segmentation":
            dice = paired if isinstance(paired, PairedDice) else None
            checks += _dice_drop_checks(metrics, champion["metrics"], gates, label, notes, dice, paired_note)
        elif family == "detection":
            boxes = paired if isinstance(paired, PairedBoxes) else None
            checks += _map_drop_checks(metrics, champion["metrics"], gates, label, notes, boxes, paired_note)
        elif family == "classification" and isinstance(paired, PairedScores):
            paired_checks, not_gated = _paired_label_checks(paired, gates, label)
            checks += paired_checks
        elif family == "classification":
            notes.append(
                f"compared with {label} on point estimates, not a paired test: "
                f"{paired_note or 'no per-image test predictions'}; re-evaluate both runs to compare them on the "
                "same images."
            )
            for key, champ_value in sorted(champion["metrics"].items()):
                if not key.startswith(_LABEL_AUROC):
                    continue
                value = metrics.get(key)
                if value is None:
                    notes.append(f"{label} has {key} but this run does not; that label was not compared.")
                    continue
                suffix = key.removeprefix(_LABEL_AUROC)
                positives, negatives = _count(metrics, "positives", suffix), _count(metrics, "negatives", suffix)
                if positives is not None and negatives is not None and _too_few(positives, negatives, gates):
                    not_gated.append(_not_gated(suffix, key, positives, negatives, gates))
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
    notes += [entry["message"] for entry in not_gated]
    failures = [c for c in checks if not c["passed"]]
    return {"passed": not failures, "checks": checks, "failures": failures, "notes": notes, "not_gated": not_gated}
