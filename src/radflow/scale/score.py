"""``radflow score --ray``: a dataset split scored by Ray Data actors, each holding one ONNX Runtime session.

The work is cut by manifest row: Ray Data carries only row positions to the actors, and each actor
reads its batch's pixels from the dataset's memory-mapped shards itself (the dataset folder must be
readable at the same path on every node: a shared filesystem), so images never pass through the
driver or the object store. An actor opens the model once (``__init__``) and scores batch after
batch with :func:`radflow.runtime.score.score_batch`, the single-process scorer's own batch step, so
both paths compute the same numbers; the driver puts each batch's scores back at its rows and
writes the table :func:`radflow.runtime.score.scores_frame` writes for the single process.

One actor per cluster CPU, one ORT intra-op thread each: on the same cores that is the
single-process scorer's thread count (bench/ray_score.py measures what the engine costs).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radflow.data.dataset import Dataset
from radflow.errors import ConfigError
from radflow.runtime import RadflowModel
from radflow.runtime.score import score_batch, scores_frame
from radflow.scale.cluster import connect

__all__ = ["BatchScorer", "cluster_cpus", "score_dataset_ray"]


class BatchScorer:
    """The Ray Data callable class: one ONNX Runtime session per actor, a batch of row positions per call."""

    def __init__(self, onnx: Any, dataset: str, rows: np.ndarray, threads: int = 1):
        import ray

        folder = Path(tempfile.mkdtemp(prefix="radflow-ray-model-"))
        path = folder / "model.onnx"
        # The model's bytes come through the object store once per node, not inside every actor's pickled UDF.
        path.write_bytes(ray.get(onnx) if isinstance(onnx, ray.ObjectRef) else onnx)
        self.model = RadflowModel.load(path, threads=threads)
        self.ds = Dataset.open(dataset)
        self.rows = rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        positions = np.asarray(batch["data"], np.int64)
        return {"pos": positions, "scores": score_batch(self.model, self.ds, self.rows[positions])}


def cluster_cpus(ray: Any) -> int:
    """CPUs of the connected cluster (at least one)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _quiet_data(ray: Any) -> None:
    # Ray Data (re)configures its loggers when a dataset runs, at the level this variable names; a scoring job
    # reports its own progress, so its INFO lines ("execution finished") are noise.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False


def score_dataset_ray(
    model: RadflowModel,
    dataset: Path,
    split: str = "test",
    batch_size: int = 32,
    address: str = "auto",
    actors: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """What :func:`radflow.runtime.score_dataset` returns, scored on the Ray cluster at ``address``.

    The address is checked (and the cluster joined) before the dataset is read. ``actors``
    defaults to one per cluster CPU.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
    ray = connect(address)
    ds = Dataset.open(dataset)
    rows = ds.indices(split)
    out = np.zeros((len(rows), len(model.labels)), np.float32)
    if len(rows):
        pool = actors or min(cluster_cpus(ray), math.ceil(len(rows) / batch_size))
        _quiet_data(ray)
        # Blocks made in the driver, not by read tasks: a read task would wait for a CPU the actors hold.
        positions = ray.data.from_numpy(
            [np.arange(start, min(start + batch_size, len(rows))) for start in range(0, len(rows), batch_size)]
        )
        scored = positions.map_batches(
            BatchScorer,
            fn_constructor_args=(ray.put(Path(model.source).read_bytes()), str(Path(dataset).resolve()), rows),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=1,
        )
        done = 0
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            out[batch["pos"]] = batch["scores"]
            done += len(batch["pos"])
            if progress is not None:
                progress(done)
    return scores_frame(ds, rows, model.labels, out)
