"""Batch scoring of a dataset split with an exported model (``radflow score``), torch-free.

Reads the split's pixels straight from the memory-mapped shards, in batches, through the same
:class:`~radflow.runtime.session.RadflowModel` the server uses, so offline scores and served
answers cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from radflow.data.dataset import Dataset
from radflow.errors import ConfigError
from radflow.runtime.metadata import sex_feature
from radflow.runtime.session import RadflowModel

__all__ = ["score_batch", "score_dataset", "scores_frame"]


def score_dataset(
    model: RadflowModel,
    ds: Dataset,
    split: str = "test",
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """One row per image of ``split`` (manifest order): ``image_id`` then one column per label.

    Columns hold probabilities, or the regression value in the target unit. ``progress`` is called
    with the number of images done after each batch.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
    rows = ds.indices(split)
    out = np.zeros((len(rows), len(model.labels)), np.float32)
    done = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        out[done : done + len(chunk)] = score_batch(model, ds, chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return scores_frame(ds, rows, model.labels, out)


def score_batch(model: RadflowModel, ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """Scores ``(len(rows), L)`` of manifest rows ``rows``: their pixels (and sex, for regression) through the model.

    One batch of :func:`score_dataset`; Ray actors (:mod:`radflow.scale.score`) call it on theirs.
    """
    extra = sex_feature(ds.manifest["sex"].to_numpy()[rows]) if model.needs_sex else None
    scores, _ = model.run(ds.images(rows), extra, cam=False)
    return np.asarray(scores, np.float32)


def scores_frame(ds: Dataset, rows: np.ndarray, labels: list[str], scores: np.ndarray) -> pd.DataFrame:
    """The scored Parquet's table: ``image_id`` of ``rows`` then one float32 column per label."""
    frame = pd.DataFrame({"image_id": ds.manifest["image_id"].to_numpy()[rows]})
    for j, label in enumerate(labels):
        frame[label] = scores[:, j]
    return frame
