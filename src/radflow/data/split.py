"""Patient-level, stratified train/val/test split of a dataset (``radflow split``).

Every image of a patient lands in one split, because a model that has seen another study of
the same patient scores optimistically on it (the classic leakage in chest X-ray papers).
Rows the source already assigns (``official_split``, e.g. CheXpert's valid.csv -> "test") keep
that split and pull every other row of the same patient with them. The remaining patients
are distributed by iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011), applied
to patients rather than images: a patient's label vector is the union of its images' labels
and a patient weighs as many images as it has, so the final image fractions approach the
requested ones and rare labels are spread over every split. Regression targets are
stratified by systematic sampling along each patient's mean target (quantile bins as fine
as the smallest split allows). Segmentation datasets are stratified the same way through their
label columns, which say whether each image shows each structure, so images showing a rare
structure are spread over every split; the mask shards are not touched.

The assignment depends only on the manifest's content and the seed (patients are visited in
sorted-id order before the seeded shuffle), so a re-run reproduces it exactly.

Rows ingested from an extra source (``official_split == "extra"``, e.g. reader feedback) are
training-only: the split above is drawn from the other rows exactly as if they were absent, then
the extra rows join train. Adding feedback therefore never moves an image into or out of val or
test; :func:`held_out_version` names the test set so models can be compared on it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radflow.data.dataset import SPLITS, Dataset, write_dataset
from radflow.errors import ConfigError, DataError

__all__ = ["EXTRA_SPLIT", "deal_by_target", "held_out_version", "iterative_stratification", "split_dataset"]

EXTRA_SPLIT = "extra"
"""``official_split`` of rows from an extra, training-only source (see the module docstring)."""

_COMPUTED_KEYS = {
    "format_version",
    "version",
    "task",
    "labels",
    "preprocess",
    "source",
    "counts",
    "prevalence",
    "skipped",
}
_MAX_BLOCK = 20


def _check_fractions(val: float, test: float) -> None:
    for flag, value in (("--val", val), ("--test", test)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{flag} must be a fraction >= 0 of the images, got {value}.")
    if val + test >= 1:
        raise ConfigError(
            f"--val {val} + --test {test} = {val + test:g} leaves no images for training; "
            "choose fractions that sum to less than 1 (e.g. --val 0.1 --test 0.1)."
        )


def iterative_stratification(
    labels: np.ndarray,
    weights: np.ndarray,
    need: np.ndarray,
    label_need: np.ndarray,
    have_positive: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Assign examples to subsets by weighted iterative stratification; returns a subset index per example.

    ``labels`` (n, L) holds each example's positive count per label (0 = absent); ``weights`` (n,)
    its size; ``need`` (k,) the size each subset still wants and ``label_need`` (k, L) the
    positives per label it still wants (both may start negative when fixed examples already
    overfill a subset); ``have_positive`` (k, L) whether a subset already holds a positive.
    Subsets with ``need <= 0`` at the start receive nothing unless every subset is in that state.

    Labels are served rarest first, a label's examples in seeded random order; each goes to the
    subset that (1) still wants examples at all, (2) holds no positive of that label yet,
    (3) wants that label most, (4) wants examples most. Rules (1) and (2) are additions to
    Sechidis et al.: (1) keeps subset sizes on target when examples differ in weight, (2) puts
    a rare label's first positives into every split instead of letting the largest subset
    take them all.
    """
    n, n_labels = labels.shape
    k = len(need)
    need = need.astype(np.float64).copy()
    label_need = label_need.astype(np.float64).copy()
    covered = have_positive.astype(bool).copy()
    active = need > 0
    if not active.any():
        active[:] = True
    subsets = [j for j in range(k) if active[j]]
    tiebreak = rng.random((n, k))
    assignment = np.full(n, -1, dtype=np.int64)
    present = labels > 0
    remaining = present.sum(axis=0).astype(np.int64)
    # Random (not largest-first) order: largest-first would leave the small patients to fill
    # val and test, making those splits systematically different patients.
    order = rng.permutation(n)
    members = [order[present[order, col]] for col in range(n_labels)]

    def place(i: int, col: int | None) -> None:
        w = weights[i]
        best_j, best_key = subsets[0], None
        for j in subsets:
            key = (
                need[j] > 0,
                col is not None and not covered[j, col],
                label_need[j, col] if col is not None else 0.0,
                need[j],
                tiebreak[i, j],
            )
            if best_key is None or key > best_key:
                best_j, best_key = j, key
        assignment[i] = best_j
        need[best_j] -= w
        label_need[best_j] -= labels[i]
        covered[best_j] |= present[i]
        remaining[present[i]] -= 1

    while True:
        open_labels = np.flatnonzero(remaining > 0)
        if len(open_labels) == 0:
            break
        col = int(open_labels[np.argmin(remaining[open_labels])])
        for i in members[col]:
            if assignment[i] < 0:
                place(int(i), col)
    for i in order:
        if assignment[i] < 0:
            place(int(i), None)
    return assignment


def deal_by_target(target: np.ndarray, weights: np.ndarray, need: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign examples with a continuous target to subsets so each gets an even sample of its range.

    Examples are walked in target order (shuffled within blocks of neighbours, so the seed
    matters) and each goes to the subset furthest behind its share ``need / need.sum()`` of the
    weight walked so far: systematic sampling, which balances the target's whole distribution
    per subset, not only a handful of quantile bins. Examples without a target come last and
    only even out sizes.
    """
    n = len(target)
    share = need / need.sum() if need.sum() > 0 else np.full(len(need), 1.0 / len(need))
    smallest = share[share > 0].min()
    block = int(min(_MAX_BLOCK, max(1, round(1.0 / smallest))))
    known = np.isfinite(target)
    rank = np.empty(n, dtype=np.float64)
    ordered = np.flatnonzero(known)[np.argsort(target[known], kind="stable")]
    rank[ordered] = np.arange(len(ordered)) // block
    rank[~known] = np.inf
    order = np.lexsort((rng.random(n), rank))
    assignment = np.empty(n, dtype=np.int64)
    given = np.zeros(len(need), dtype=np.float64)
    walked = 0.0
    jitter = rng.random((n, len(need))) * 1e-9
    for i in order:
        # Deficits before this example's own weight: counting it first would send heavy examples
        # to the largest subset and leave val/test with more, smaller patients.
        deficit = np.where(share > 0, share * walked - given, -np.inf) + jitter[i]
        j = int(np.argmax(deficit))
        assignment[i] = j
        given[j] += weights[i]
        walked += weights[i]
    return assignment


def _official_by_patient(
    manifest: pd.DataFrame, codes: np.ndarray, n_patients: int, root: Path
) -> tuple[np.ndarray, int]:
    """Per patient: index into SPLITS of its official split (-1: none), and how many patients had two."""
    official = manifest["official_split"].fillna("").astype(str).to_numpy()
    unknown = sorted(set(official) - {"", *SPLITS})
    if unknown:
        raise DataError(
            f"manifest column official_split holds {unknown}; expected one of {', '.join(SPLITS)} or empty. "
            "Re-ingest the source.",
            path=root / "manifest.parquet",
        )
    rank = np.full(len(official), -1, dtype=np.int64)
    for j, name in enumerate(SPLITS):
        rank[official == name] = j
    # Test outranks val outranks train: a patient seen in an official test set must never train.
    result = np.full(n_patients, -1, dtype=np.int64)
    np.maximum.at(result, codes, rank)
    lowest = np.full(n_patients, len(SPLITS), dtype=np.int64)
    np.minimum.at(lowest, codes, np.where(rank >= 0, rank, len(SPLITS)))
    conflicts = int(((lowest < result) & (result >= 0)).sum())
    return result, conflicts


def split_dataset(root: Path, val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Assign every image to train/val/test by patient, stratified; rewrites manifest and dataset.json.

    Returns a summary: requested fractions, images and patients per split, per-label positives
    (or target mean/sd for regression) per split, and warnings (e.g. a label with no positive
    image in some split). Pixel shards are not touched.
    """
    _check_fractions(val, test)
    root = Path(root)
    dataset = Dataset.open(root)
    full = dataset.manifest.copy()
    labels, task = dataset.labels, dataset.task
    is_extra = (full["official_split"].fillna("").astype(str) == EXTRA_SPLIT).to_numpy()
    # The split is drawn from the main source alone, so extra rows can never change it.
    manifest = full[~is_extra].reset_index(drop=True)
    if len(manifest) == 0:
        raise DataError("the dataset has no images to split; ingest a source with images first.", path=root)

    patient_ids, codes = np.unique(manifest["patient_id"].astype(str).to_numpy(), return_inverse=True)
    n_patients = len(patient_ids)
    weights = np.bincount(codes, minlength=n_patients).astype(np.float64)
    values = manifest[labels].to_numpy(dtype=np.float64)
    official, conflicts = _official_by_patient(manifest, codes, n_patients, root)
    fixed = official >= 0
    free = np.flatnonzero(~fixed)

    fractions = np.array([1.0 - val - test, val, test])
    n_images = float(len(manifest))
    fixed_images = np.array([weights[official == j].sum() for j in range(len(SPLITS))])
    # Targets are fractions of ALL images; the official assignment counts towards them.
    need = np.maximum(fractions * n_images - fixed_images, 0.0)
    free_images = weights[free].sum()
    held_out = need[1:].sum()
    if held_out > free_images:
        need[1:] *= free_images / held_out
    need[0] = free_images - need[1:].sum()

    rng = np.random.default_rng(seed)
    patient_split = official.copy()
    if len(free) and task == "regression":
        total = np.bincount(codes, weights=np.nan_to_num(values[:, 0]), minlength=n_patients)
        known = np.bincount(codes, weights=np.isfinite(values[:, 0]), minlength=n_patients)
        mean = np.full(n_patients, np.nan)
        np.divide(total, known, out=mean, where=known > 0)
        patient_split[free] = deal_by_target(mean[free], weights[free], need, rng)
    elif len(free):
        # Positive images per patient and label; a patient "has" a label if any of its images does.
        strata = np.zeros((n_patients, len(labels)), dtype=np.float64)
        np.add.at(strata, codes, (values == 1).astype(np.float64))
        fixed_strata = np.stack([strata[official == j].sum(axis=0) for j in range(len(SPLITS))])
        label_need = fractions[:, None] * strata.sum(axis=0)[None, :] - fixed_strata
        patient_split[free] = iterative_stratification(
            strata[free], weights[free], need, label_need, fixed_strata > 0, rng
        )
    split_names = np.asarray(SPLITS, dtype=object)[patient_split[codes]]
    manifest["split"] = split_names.astype(str)
    warnings = _warnings(manifest, labels, task, official, weights, fractions, val, test)
    full["split"] = "train"
    full.loc[~is_extra, "split"] = manifest["split"].to_numpy()
    manifest = full
    if conflicts:
        warnings.insert(
            0,
            f"{conflicts} patient{'s' if conflicts != 1 else ''} had images in two official splits; "
            "all their images went to the stricter one (test over val over train).",
        )
    extra = {key: value for key, value in dataset.info.items() if key not in _COMPUTED_KEYS}
    extra["split"] = {
        "val": val,
        "test": test,
        "seed": seed,
        "method": "patient-level iterative stratification",
        "extra_train_images": int(is_extra.sum()),
        "held_out_version": _held_out(manifest, labels, dataset.spec.to_dict()),
        "warnings": warnings,
    }
    info = write_dataset(
        root,
        manifest,
        labels=labels,
        task=task,
        spec=dataset.spec,
        source=dataset.info.get("source", {}),
        skipped=dataset.info.get("skipped", []),
        extra=extra,
    )
    summary = _summary(root, info, manifest, labels, val, test, seed, official, weights, warnings)
    summary["extra_train_images"] = int(is_extra.sum())
    summary["held_out_version"] = extra["split"]["held_out_version"]
    return summary


def held_out_version(dataset: Dataset) -> str:
    """Content hash of the test split (image hashes, labels, preprocessing): equal means the same test set.

    Dataset versions differ whenever training data is added; this one changes only with the test set,
    so the registry can still compare a model retrained on feedback with the champion.
    """
    return _held_out(dataset.manifest, dataset.labels, dataset.spec.to_dict())


def _held_out(manifest: pd.DataFrame, labels: list[str], spec: dict[str, Any]) -> str:
    test = manifest[manifest["split"] == "test"]
    rows = test[["sha256", *labels]].astype({label: "float32" for label in labels}).sort_values("sha256")
    header = {"spec": spec, "labels": labels}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _warnings(
    manifest: pd.DataFrame,
    labels: list[str],
    task: str,
    official: np.ndarray,
    weights: np.ndarray,
    fractions: np.ndarray,
    val: float,
    test: float,
) -> list[str]:
    out: list[str] = []
    n_images = len(manifest)
    for j, (name, flag, wanted) in enumerate(zip(SPLITS[1:], ("--val", "--test"), (val, test), strict=True), start=1):
        official_share = weights[official == j].sum() / n_images
        if official_share > wanted + 1e-9:
            out.append(
                f"the source's official {name} split holds {official_share:.1%} of the images, more than "
                f"{flag} {wanted:g}; it was kept whole and no other patients were added to {name}."
            )
    for name, wanted in zip(SPLITS, fractions, strict=True):
        if wanted > 0 and not (manifest["split"] == name).any():
            out.append(f"split {name!r} is empty: too few patients to honour the requested fractions.")
    if task == "regression":
        return out
    for label in labels:
        positive = manifest[label] == 1
        if not positive.any():
            out.append(f"label {label!r} has no positive image in any split.")
            continue
        missing = [
            name
            for name in SPLITS
            if (manifest["split"] == name).any() and not positive[manifest["split"] == name].any()
        ]
        if missing:
            patients = manifest.loc[positive, "patient_id"].nunique()
            out.append(
                f"label {label!r} has no positive image in {', '.join(missing)} "
                f"({patients} positive patient{'s' if patients != 1 else ''} in all)."
            )
    return out


def _summary(
    root: Path,
    info: dict[str, Any],
    manifest: pd.DataFrame,
    labels: list[str],
    val: float,
    test: float,
    seed: int,
    official: np.ndarray,
    weights: np.ndarray,
    warnings: list[str],
) -> dict[str, Any]:
    n_images = len(manifest)
    counts: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(SPLITS):
        rows = manifest["split"] == name
        counts[name] = {
            "images": int(rows.sum()),
            "patients": int(manifest.loc[rows, "patient_id"].nunique()),
            "fraction": round(float(rows.sum()) / n_images, 4),
            "official_images": int(weights[official == j].sum()),
        }
    summary: dict[str, Any] = {
        "dataset": str(root),
        "version": info["version"],
        "task": info["task"],
        "requested": {"val": val, "test": test, "seed": seed},
        "counts": counts,
    }
    if info["task"] == "regression":
        summary["target"] = {name: info["prevalence"].get(name) for name in SPLITS}
    else:
        summary["positives"] = {
            label: {name: int(((manifest["split"] == name) & (manifest[label] == 1)).sum()) for name in SPLITS}
            for label in labels
        }
    summary["warnings"] = warnings
    return summary
