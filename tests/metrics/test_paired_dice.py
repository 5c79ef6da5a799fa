"""The paired Dice difference: per-image Dice of two models' masks on the same images, resampling patients."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.metrics.paired import paired_bootstrap_dice
from radflow.metrics.segmentation import image_metrics

PATIENTS = 10


def _dice(shifts: list[int]) -> np.ndarray:
    """Per-image Dice of an 8 x 8 square predicted ``shift`` pixels to the right (Dice (8 - shift) / 8)."""
    truth = np.zeros((len(shifts), 1, 24, 24), dtype=bool)
    truth[:, :, 4:12, 4:12] = True
    pred = np.zeros_like(truth)
    for i, shift in enumerate(shifts):
        pred[i, :, 4:12, 4 + shift : 12 + shift] = True
    return image_metrics(pred, truth).dice[:, 0]


# two images per patient, both shifted alike
GROUPS = np.repeat([f"p{i}" for i in range(PATIENTS)], 2)
CHAMPION = _dice([1] * 2 * PATIENTS)  # Dice 0.875 on every image
NOISY = _dice(np.repeat([0, 0, 0, 0, 0, 0, 5, 5, 5, 5], 2).tolist())  # better on 6 patients, far worse on 4
STEADY = _dice([2] * 2 * PATIENTS)  # 0.75 on every image


def test_the_same_drop_in_mean_dice_is_noise_or_real_by_its_paired_interval() -> None:
    noisy = paired_bootstrap_dice(CHAMPION, NOISY, GROUPS, n_bootstrap=2000)
    steady = paired_bootstrap_dice(CHAMPION, STEADY, GROUPS, n_bootstrap=2000)
    # the point estimates differ by the same 0.125 in both
    assert noisy["dice_a"] == steady["dice_a"] == pytest.approx(0.875)
    assert noisy["diff"] == pytest.approx(-0.125) and steady["diff"] == pytest.approx(-0.125)
    assert noisy["ci"][0] < 0 < noisy["ci"][1]  # patients disagree: the interval holds 0
    assert noisy["p_value"] > 0.05
    assert steady["ci"] == pytest.approx([-0.125, -0.125])  # every patient loses the same: not noise
    assert steady["p_value"] < 0.01
    assert noisy["n"] == steady["n"] == 2 * PATIENTS and noisy["resamples"] == 2000


def test_images_where_either_dice_is_undefined_are_left_out_of_both() -> None:
    a, b = CHAMPION.copy(), STEADY.copy()
    a[0], b[1] = np.nan, np.nan
    result = paired_bootstrap_dice(a, b, GROUPS, n_bootstrap=50)
    assert result["n"] == 2 * PATIENTS - 2 and result["diff"] == pytest.approx(-0.125)
    empty = paired_bootstrap_dice(np.full(3, np.nan), np.ones(3))
    assert empty["diff"] is None and empty["ci"] is None and empty["n"] == 0
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_dice(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="one entry per image"):
        paired_bootstrap_dice(np.ones(3), np.ones(3), np.array(["p"]))
