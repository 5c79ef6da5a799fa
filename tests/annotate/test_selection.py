"""Selection strategies on a real exported model: each ranks the pool by what it says it ranks by."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radflow.annotate.selection import rank, score_pool
from radflow.errors import ConfigError
from radflow.monitor.reference import load_reference
from radflow.runtime import RadflowModel


@pytest.fixture(scope="module")
def models(onnx_pair: tuple[Path, Path]) -> tuple[RadflowModel, RadflowModel]:
    return RadflowModel.load(onnx_pair[0]), RadflowModel.load(onnx_pair[1])


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (10, 32, 32), dtype=np.uint8)


def test_uncertainty_entropy_and_disagreement_rank_by_their_scores(
    models: tuple[RadflowModel, RadflowModel], pixels: np.ndarray
) -> None:
    champion, challenger = models
    scored = score_pool(champion, pixels)
    probs = champion.run(pixels, cam=False)[0]
    assert np.allclose(scored.outputs, probs, atol=1e-6) and scored.embedding is not None
    thresholds = np.array([(champion.meta.thresholds or {}).get(label, 0.5) for label in champion.labels])
    order, _ = rank("uncertainty", champion, scored)
    assert order[0] == np.argmin(np.abs(probs - thresholds).min(axis=1))
    order, scores = rank("entropy", champion, scored)
    assert np.all(np.diff(scores) <= 0) and order[0] == np.argmax(
        (-(probs * np.log2(probs) + (1 - probs) * np.log2(1 - probs))).mean(axis=1)
    )
    other = score_pool(challenger, pixels)
    order, scores = rank("disagreement", champion, scored, challenger=other)
    assert order[0] == np.argmax(np.abs(probs - other.outputs).max(axis=1)) and scores[0] > 0
    with pytest.raises(ConfigError, match="needs a challenger"):
        rank("disagreement", champion, scored)


def test_drift_ranks_by_embedding_distance_and_random_is_seeded(
    models: tuple[RadflowModel, RadflowModel], pixels: np.ndarray
) -> None:
    champion = models[0]
    scored = score_pool(champion, pixels)
    reference, _ = load_reference(champion.source, champion.labels)
    assert reference is not None and reference.embedding is not None and scored.embedding is not None
    mean, std = np.array(reference.embedding.mean), np.array(reference.embedding.std)
    keep = std > 0
    distance = np.sqrt((((scored.embedding[:, keep] - mean[keep]) / std[keep]) ** 2).mean(axis=1))
    order, scores = rank("drift", champion, scored, reference=reference)
    assert order[0] == np.argmax(distance) and np.allclose(scores, np.sort(distance)[::-1], rtol=1e-6)
    first, _ = rank("random", champion, None, n=10, seed=1)
    again, _ = rank("random", champion, None, n=10, seed=1)
    assert np.array_equal(first, again) and sorted(first) == list(range(10))
    with pytest.raises(ConfigError, match="needs the model's reference"):
        rank("drift", champion, scored, reference=None)
    with pytest.raises(ConfigError, match="Did you mean 'entropy'"):
        rank("entropie", champion, scored)
