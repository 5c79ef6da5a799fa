from __future__ import annotations

import numpy as np
import pytest

from radflow.errors import ConfigError
from radflow.sim.arrivals import arrival_schedule, burst_size


def test_single_arrivals_are_poisson_at_the_rate() -> None:
    schedule = arrival_schedule(50.0, 200.0, np.random.default_rng(0))
    times = np.array([t for t, _ in schedule])
    assert all(n == 1 for _, n in schedule)
    assert len(schedule) == pytest.approx(10_000, rel=0.05)
    assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] < 200
    gaps = np.diff(times)
    # exponential gaps: mean = sd = 1/rate
    assert gaps.mean() == pytest.approx(0.02, rel=0.05)
    assert gaps.std() == pytest.approx(0.02, rel=0.08)


def test_batch_mode_sends_bursts_with_the_same_mean_image_rate() -> None:
    schedule = arrival_schedule(40.0, 200.0, np.random.default_rng(1), mode="batch", batch_size=8)
    images = sum(n for _, n in schedule)
    assert images == pytest.approx(8000, rel=0.08)
    assert len(schedule) == pytest.approx(1000, rel=0.1)
    assert min(n for _, n in schedule) >= 1 and max(n for _, n in schedule) > 8


def test_same_seed_same_schedule() -> None:
    a = arrival_schedule(5.0, 10.0, np.random.default_rng(3), mode="batch")
    assert a == arrival_schedule(5.0, 10.0, np.random.default_rng(3), mode="batch")
    assert a != arrival_schedule(5.0, 10.0, np.random.default_rng(4), mode="batch")


def test_burst_size_is_never_empty() -> None:
    rng = np.random.default_rng(0)
    assert {burst_size(1.0, rng) for _ in range(50)} == {1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0.0}, "rate must be > 0"),
        ({"mode": "burst"}, "mode must be 'single' or 'batch'"),
        ({"mode": "batch", "batch_size": 0.5}, "batch size must be >= 1"),
        ({"duration": -1.0}, "duration must be >= 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"rate": 1.0, "duration": 1.0, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ConfigError, match=message):
        arrival_schedule(**args)  # type: ignore[arg-type]
