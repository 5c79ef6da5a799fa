"""Shared plumbing of the phantom generators: argument checks, per-image seeding, the worker pool, PNG output.

Every image is drawn from its own generator seeded by ``(seed, stream, index)``, so the bytes of an
image depend only on the seed and its index, never on how many workers drew it or in which order.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from radflow.errors import ConfigError
from radflow.hardware import available_cores

__all__ = [
    "MIN_SIZE",
    "check_common",
    "draw_marker",
    "image_rng",
    "run_jobs",
    "to_uint8",
    "write_png",
]

MIN_SIZE = 32
"""Smallest image side drawn: below it ribs, fingers and nodules vanish into a few pixels."""

J = TypeVar("J")


def check_common(n: int, seed: int, size: int, workers: int | None) -> None:
    """Raise :class:`ConfigError` naming the CLI flag for arguments no generator accepts."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ConfigError(f"--n must be a positive number of images, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= 4096:
        raise ConfigError(f"--size must be between {MIN_SIZE} and 4096 pixels, got {size!r}")
    if workers is not None and (not isinstance(workers, int) or workers <= 0):
        raise ConfigError(f"--workers must be a positive integer, got {workers!r}")


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator for one image (or patient): a function of (seed, stream, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 8-bit grey levels (rounded, clipped)."""
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def draw_marker(img: np.ndarray, text: str, x: float, y: float) -> None:
    """Burn a lead side marker (e.g. "L") into ``img`` in place at fractions (x, y) of its width and height."""
    h, w = img.shape
    mask = np.zeros((h, w), np.uint8)  # cv2.putText draws on 8-bit images only
    cv2.putText(
        mask, text, (int(w * x), int(h * y)), cv2.FONT_HERSHEY_SIMPLEX, w / 320, 255, max(1, w // 128), cv2.LINE_AA
    )
    np.maximum(img, mask.astype(np.float32) / 255.0, out=img)


def write_png(path: Path, img8: np.ndarray) -> None:
    """Write an 8-bit grey PNG; encoded in memory so non-ASCII paths work and the bytes are reproducible."""
    ok, buf = cv2.imencode(".png", img8, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays, which we never make
        raise RuntimeError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _init_worker() -> None:
    # One OpenCV thread per process: the pool already uses every core.
    cv2.setNumThreads(1)


def _run_chunk(fn: Callable[[J], None], chunk: Sequence[J]) -> int:
    for job in chunk:
        fn(job)
    return len(chunk)


def run_jobs(fn: Callable[[J], None], jobs: Sequence[J], workers: int | None) -> int:
    """Run ``fn`` on every job, across ``workers`` processes (default: all cores); returns the worker count used.

    ``fn`` must be a module-level function (it is pickled by reference). Small batches run in this
    process, where starting a pool would cost more than it saves.
    """
    workers = min(workers or available_cores(), max(1, len(jobs) // 8))
    if workers <= 1:
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            _run_chunk(fn, jobs)
        finally:
            cv2.setNumThreads(previous)
        return 1
    # Contiguous chunks, several per worker so a slow chunk does not leave the others idle.
    per = max(1, -(-len(jobs) // (workers * 6)))
    chunks = [jobs[i : i + per] for i in range(0, len(jobs), per)]
    # forkserver: never fork a parent that may hold threads (OpenCV, torch) mid-lock.
    context = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        for _ in pool.map(_run_chunk, [fn] * len(chunks), chunks):
            pass
    return workers
