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

__all__ = ["score_dataset"]


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
    for chunk, pixels in ds.iter_batches(split, batch_size):
        extra = sex_feature(ds.manifest["sex"].to_numpy()[chunk]) if model.needs_sex else None
        scores, _ = model.run(pixels, extra, cam=False)
        out[done : done + len(chunk)] = scores
        done += len(chunk)
        if progress is not None:
            progress(done)
    frame = pd.DataFrame({"image_id": ds.manifest["image_id"].to_numpy()[rows]})
    for j, label in enumerate(model.labels):
        frame[label] = out[:, j]
    return frame
