from __future__ import annotations

import numpy as np
import pytest

from radflow.errors import ConfigError
from radflow.sim.drift import DriftSpec, apply_drift, parse_drift


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((32, 32), 100, np.uint8)
    img[8:24, 8:24] = 180
    return np.clip(img + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)


def test_parse_drift_reads_all_parameters_and_empty_means_none() -> None:
    spec = parse_drift(" brightness=0.3, contrast=0.5,noise=0.05 ,blur=1.5")
    assert spec == DriftSpec(brightness=0.3, contrast=0.5, noise=0.05, blur=1.5)
    assert str(spec) == "brightness=0.3,contrast=0.5,noise=0.05,blur=1.5"
    assert parse_drift(None) == parse_drift("") == DriftSpec()
    assert not DriftSpec().active and spec.active


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "brightnes=0.3",
            "unknown drift parameter 'brightnes'; choose from brightness, contrast, noise, blur. "
            "Did you mean 'brightness'?",
        ),
        ("gamma=2", "unknown drift parameter 'gamma'"),
        ("noise", "needs the form name=value"),
        ("blur=soft", "drift blur='soft' is not a number"),
        ("contrast=0", "drift contrast=0 is out of range (0, 10]"),
        ("brightness=2", "drift brightness=2 is out of range [-1, 1]"),
        ("noise=-0.1", "drift noise=-0.1 is out of range"),
        ("blur=1,blur=2", "given twice"),
        ("noise=nan", "out of range"),
    ],
)
def test_parse_drift_names_the_bad_item(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_drift(text)
    assert message in str(err.value)


def test_no_drift_returns_the_same_pixels() -> None:
    img = _image()
    assert apply_drift(img, DriftSpec(), np.random.default_rng(0)) is img


def test_each_drift_moves_the_statistic_it_names() -> None:
    img = _image()
    rng = np.random.default_rng(1)
    base = img.astype(float)
    brighter = apply_drift(img, DriftSpec(brightness=0.2), rng).astype(float)
    assert brighter.mean() == pytest.approx(base.mean() + 0.2 * 255, abs=1.0)
    flat = apply_drift(img, DriftSpec(contrast=0.5), rng).astype(float)
    assert flat.std() == pytest.approx(base.std() * 0.5, rel=0.05)
    assert flat.mean() == pytest.approx(base.mean(), abs=1.0)
    noisy = apply_drift(img, DriftSpec(noise=0.1), rng).astype(float)
    assert (noisy - base).std() == pytest.approx(0.1 * 255, rel=0.1)
    blurred = apply_drift(img, DriftSpec(blur=2.0), rng).astype(float)
    # blur flattens the square's edges: neighbouring pixels differ far less
    assert np.abs(np.diff(blurred, axis=1)).max() < 0.5 * np.abs(np.diff(base, axis=1)).max()
    for out in (brighter, flat, noisy, blurred):
        assert out.shape == img.shape


def test_drift_clips_to_uint8_and_is_reproducible_with_a_seed() -> None:
    img = _image()
    spec = DriftSpec(brightness=0.9, noise=0.2)
    a = apply_drift(img, spec, np.random.default_rng(7))
    b = apply_drift(img, spec, np.random.default_rng(7))
    assert a.dtype == np.uint8 and a.max() == 255
    assert np.array_equal(a, b)
    assert not np.array_equal(a, apply_drift(img, spec, np.random.default_rng(8)))
