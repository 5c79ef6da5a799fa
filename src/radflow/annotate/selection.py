"""Which images go to the experts: selection strategies over a pool of radflow images scored by the model.

Every strategy ranks the pool's candidate rows by a score (higher: label it sooner) and the push takes the
first N it has not sent before ("expand by N": each push adds N new images from the unlabelled pool):

* ``uncertainty``: closest to the decision threshold (classification: the smallest |p - threshold| over the
  labels; segmentation: the mean closeness of the pixels' probabilities to 0.5; detection: of the anchors'
  best scores);
* ``entropy``: the mean binary entropy of the labels' probabilities (of the pixels', the anchors');
* ``disagreement``: champion against challenger (classification: the largest probability difference;
  regression: the value difference; segmentation: 1 - Dice of their masks; detection: the mean best-score
  difference);
* ``drift``: the image's embedding distance from the model's reference (:func:`radflow.monitor.drift.embedding_distance`
  of a window of one, the statistic drift monitoring alerts on);
* ``random``: a seeded shuffle (unbiased estimates of accuracy need it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from radflow.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from radflow.monitor.reference import Reference
    from radflow.runtime import RadflowModel

__all__ = ["STRATEGIES", "Scored", "rank", "score_pool"]

STRATEGIES = ("uncertainty", "entropy", "disagreement", "drift", "random")
BATCH = 32
_EPS = 1e-7


@dataclass
class Scored:
    """A model's outputs for pool images: the task output ``(N, ...)`` and the embedding ``(N, D)`` if any."""

    outputs: np.ndarray
    embedding: np.ndarray | None


def score_pool(model: RadflowModel, pixels: np.ndarray, sex: Sequence[str] | None = None) -> Scored:
    """Run ``model`` on uint8 images ``(N, H, W)`` in batches: its task output and embedding (when it has one)."""
    from radflow.data.preprocess import to_model_input
    from radflow.monitor.reference import embedding_source, embeddings_from
    from radflow.runtime.metadata import IMAGE_INPUT, SEX_INPUT, sex_feature

    names = [o.name for o in model.session.get_outputs()]
    source = embedding_source(names)
    wanted = [model.meta.output, *([source] if source else [])]
    outs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    for start in range(0, len(pixels), BATCH):
        batch = np.stack([model.prepare(p) for p in pixels[start : start + BATCH]])
        feeds = {IMAGE_INPUT: to_model_input(batch, model.spec)}
        if model.needs_sex:
            feeds[SEX_INPUT] = sex_feature(list(sex[start : start + BATCH]) if sex is not None else [""] * len(batch))
        result = model.session.run(wanted, feeds)
        outs.append(np.asarray(result[0]))
        if source:
            embs.append(embeddings_from(np.asarray(result[1]), source))
    return Scored(np.concatenate(outs), np.concatenate(embs) if embs else None)


def _thresholds(model: RadflowModel) -> np.ndarray:
    known = model.meta.thresholds or {}
    return np.array([float(known.get(label, 0.5)) for label in model.labels])


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))


def _flat(outputs: np.ndarray, task: str) -> np.ndarray:
    """Per-image probabilities to judge, ``(N, M)``: labels, pixels, or the anchors' best scores."""
    n = len(outputs)
    if task == "detection":
        return np.asarray(outputs[:, :, 4:].max(axis=2))
    return outputs.reshape(n, -1)


def _uncertainty(model: RadflowModel, scored: Scored) -> np.ndarray:
    task = model.task
    if task in ("multilabel", "multiclass"):
        return np.asarray(-np.abs(scored.outputs - _thresholds(model)).min(axis=1))
    if task == "regression":
        raise ConfigError(
            "a regression model gives no probability to be uncertain about; use --strategy disagreement (with "
            "--challenger), drift or random."
        )
    return np.asarray((1 - 2 * np.abs(_flat(scored.outputs, task) - 0.5)).mean(axis=1))


def _disagreement(model: RadflowModel, a: Scored, b: Scored) -> np.ndarray:
    task = model.task
    if a.outputs.shape != b.outputs.shape:
        raise ConfigError(
            f"champion and challenger answer differently shaped outputs ({a.outputs.shape} vs {b.outputs.shape}); "
            "disagreement needs two models of the same task and labels."
        )
    if task == "segmentation":
        x, y = a.outputs >= 0.5, b.outputs >= 0.5
        axes = tuple(range(1, x.ndim))
        inter = (x & y).sum(axis=axes)
        total = x.sum(axis=axes) + y.sum(axis=axes)
        return np.asarray(1 - np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0))
    if task == "detection":
        return np.asarray(np.abs(_flat(a.outputs, task) - _flat(b.outputs, task)).mean(axis=1))
    return np.asarray(np.abs(a.outputs.reshape(len(a.outputs), -1) - b.outputs.reshape(len(b.outputs), -1)).max(1))


def rank(
    strategy: str,
    model: RadflowModel,
    scored: Scored | None,
    *,
    challenger: Scored | None = None,
    reference: Reference | None = None,
    n: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate positions best first, their scores) by ``strategy``; ``scored`` may be None only for random."""
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown selection strategy {strategy!r}; use one of {', '.join(STRATEGIES)}."
            f"{did_you_mean(strategy, STRATEGIES)}"
        )
    if strategy == "random":
        size = n if scored is None else len(scored.outputs)
        if size is None:
            raise ValueError("random selection needs the pool size")
        score = np.random.default_rng(seed).random(size)
    else:
        if scored is None:
            raise ValueError(f"{strategy} selection needs the pool scored by the model")
        if strategy == "uncertainty":
            score = _uncertainty(model, scored)
        elif strategy == "entropy":
            if model.task == "regression":
                raise ConfigError("a regression model has no entropy; use disagreement, drift or random.")
            score = _entropy(_flat(scored.outputs, model.task)).mean(axis=1)
        elif strategy == "disagreement":
            if challenger is None:
                raise ConfigError("--strategy disagreement needs a challenger: pass --challenger MODEL.")
            score = _disagreement(model, scored, challenger)
        else:
            score = _drift(scored, reference)
    order = np.argsort(-score, kind="stable")
    return order, score[order]


def _drift(scored: Scored, reference: Reference | None) -> np.ndarray:
    from radflow.monitor.drift import embedding_distance

    if reference is None or reference.embedding is None or scored.embedding is None:
        raise ConfigError(
            "--strategy drift needs the model's reference.json with an embedding profile (written by `radflow "
            "export`) and a model with an embedding output; use another strategy for this model."
        )
    ref = reference.embedding
    return np.array([embedding_distance(ref.mean, ref.std, row[None]) for row in scored.embedding])


def describe(strategy: str, score: float) -> dict[str, Any]:
    return {"strategy": strategy, "score": round(float(score), 6)}
