"""When a clinic's requests arrive: a Poisson process, single images or worklist bursts.

Independent arrivals at a mean rate are the standard model of requests from many uncoordinated
clients (here, modalities and readers); open-loop timing keeps the offered load fixed even when
the server slows down, which is what exposes queueing and overload.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from radflow.errors import ConfigError

__all__ = ["Arrival", "arrival_schedule", "arrivals", "burst_size", "next_gap"]

Arrival = tuple[float, int]
"""(seconds after the start, images sent at that moment)."""


def next_gap(rate: float, rng: np.random.Generator) -> float:
    """Seconds to the next event of a Poisson process with ``rate`` events per second."""
    if rate <= 0:
        raise ConfigError(f"rate must be > 0 events per second, got {rate:g}.")
    return float(rng.exponential(1.0 / rate))


def burst_size(mean: float, rng: np.random.Generator) -> int:
    """Images in one worklist burst: ``1 + Poisson(mean - 1)``, so never empty and ``mean`` on average."""
    return 1 + int(rng.poisson(max(mean - 1.0, 0.0)))


def arrivals(rate: float, rng: np.random.Generator, mode: str = "single", batch_size: float = 8.0) -> Iterator[Arrival]:
    """Endless arrivals offering ``rate`` images per second on average.

    ``single``: one image per arrival. ``batch``: bursts of :func:`burst_size` images arriving at
    ``rate / batch_size`` per second, as when a worklist of a study's images is sent at once.
    """
    if mode not in ("single", "batch"):
        raise ConfigError(f"mode must be 'single' or 'batch', got {mode!r}.")
    if rate <= 0:
        raise ConfigError(f"rate must be > 0 images per second, got {rate:g}.")
    if mode == "batch" and batch_size < 1:
        raise ConfigError(f"batch size must be >= 1 image, got {batch_size:g}.")
    event_rate = rate if mode == "single" else rate / batch_size
    t = 0.0
    while True:
        t += next_gap(event_rate, rng)
        yield t, 1 if mode == "single" else burst_size(batch_size, rng)


def arrival_schedule(
    rate: float, duration: float, rng: np.random.Generator, mode: str = "single", batch_size: float = 8.0
) -> list[Arrival]:
    """The arrivals of :func:`arrivals` that fall in ``[0, duration)``."""
    if duration < 0:
        raise ConfigError(f"duration must be >= 0 seconds, got {duration:g}.")
    out: list[Arrival] = []
    for arrival in arrivals(rate, rng, mode, batch_size):
        if arrival[0] >= duration:
            break
        out.append(arrival)
    return out
