"""Segmentation metrics: exact values on hand-made masks, empty-mask conventions, patient bootstrap, subgroups."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from radflow.metrics.segmentation import image_metrics, segmentation_report

S = 32


def square(r0: int, c0: int, side: int = 10, size: int = S) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[r0 : r0 + side, c0 : c0 + side] = True
    return mask


def stack(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) pairs of one structure to (n, 1, S, S) arrays."""
    pred = np.stack([p for p, _ in pairs])[:, None]
    truth = np.stack([t for _, t in pairs])[:, None]
    return pred, truth


def brute_force_distances(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float]:
    """HD95 and MSD from all pairwise surface-pixel distances, the definition written out independently."""

    def surface(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    sp, st = surface(pred), surface(truth)
    d = np.sqrt(((sp[:, None, :] - st[None, :, :]) ** 2).sum(axis=2))
    d_pt, d_tp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    return float(hd95), float(np.concatenate([d_pt, d_tp]).mean())


def test_shifted_squares_exact_values() -> None:
    # A 10x10 square and the same square 3 columns to the right: overlap 10x7.
    pred, truth = stack([(square(10, 13), square(10, 10))])
    m = image_metrics(pred, truth)
    assert m.dice[0, 0] == pytest.approx(0.7)
    assert m.iou[0, 0] == pytest.approx(70 / 130)
    # Of the 36 surface pixels of either square, 14 are 3 px from the other's surface, 4 at 2, 4 at 1, 14 at 0.
    assert m.hd95[0, 0] == pytest.approx(3.0)
    assert m.msd[0, 0] == pytest.approx(54 / 36)
    half = image_metrics(pred, truth, spacing=[0.5])
    assert half.hd95[0, 0] == pytest.approx(1.5)
    assert half.msd[0, 0] == pytest.approx(0.75)


def test_distances_match_brute_force_with_anisotropic_spacing() -> None:
    rng = np.random.default_rng(3)
    truth = np.zeros((S, S), dtype=bool)
    truth[4:20, 6:25] = True
    truth[12:28, 2:9] = True
    pred = np.roll(truth, (2, -3), axis=(0, 1)) & (rng.random((S, S)) > 0.1)
    for spacing in ((1.0, 1.0), (0.5, 2.0)):
        m = image_metrics(pred[None, None], truth[None, None], spacing=[spacing])
        hd95, msd = brute_force_distances(pred, truth, spacing)
        assert m.hd95[0, 0] == pytest.approx(hd95)
        assert m.msd[0, 0] == pytest.approx(msd)


def test_masks_touching_the_image_border_keep_their_border_surface() -> None:
    truth = square(0, 0, side=8)
    pred = square(0, 0, side=6)
    m = image_metrics(pred[None, None], truth[None, None])
    hd95, msd = brute_force_distances(pred, truth, (1.0, 1.0))
    assert (m.hd95[0, 0], m.msd[0, 0]) == (pytest.approx(hd95), pytest.approx(msd))


def test_empty_mask_conventions() -> None:
    empty = np.zeros((S, S), dtype=bool)
    pred, truth = stack([(empty, empty), (square(2, 2), empty), (empty, square(2, 2)), (square(5, 5), square(5, 5))])
    m = image_metrics(pred, truth)
    assert np.isnan(m.dice[0, 0]) and np.isnan(m.iou[0, 0])  # both empty: undefined, left out
    assert m.dice[1, 0] == 0.0 and m.dice[2, 0] == 0.0  # one empty: a miss or a false positive
    assert np.isnan(m.hd95[:3, 0]).all() and np.isnan(m.msd[:3, 0]).all()
    assert (m.dice[3, 0], m.hd95[3, 0], m.msd[3, 0]) == (1.0, 0.0, 0.0)

    report = segmentation_report(pred, truth, ["lung"], ["a", "b", "c", "d"], n_bootstrap=50)
    lung = report["per_structure"]["lung"]
    assert lung["dice"] == pytest.approx(1 / 3) and lung["dice_n"] == 3
    assert lung["hd95"] == 0.0 and lung["distance_n"] == 1 and lung["distance_undefined"] == 2
    assert (lung["truth_present"], lung["pred_present"]) == (2, 2)

    nothing = segmentation_report(pred[:1], truth[:1], ["lung"], ["a"], n_bootstrap=20)
    entry = nothing["per_structure"]["lung"]
    assert entry["dice"] is None and entry["dice_ci"] is None and entry["hd95"] is None
    assert nothing["macro"]["dice"] is None and nothing["macro"]["n_structures"] == 0


def test_report_ci_contains_the_estimate_and_resamples_patients() -> None:
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(12):
        r, c = rng.integers(4, 18, size=2)
        truth = square(r, c)
        pairs.append((square(r + rng.integers(-3, 4), c + rng.integers(-3, 4)), truth))
    pred, truth = stack(pairs)
    pred, truth = np.repeat(pred, 2, axis=1), np.repeat(truth, 2, axis=1)
    patients = [f"p{i // 3}" for i in range(12)]
    report = segmentation_report(pred, truth, ["lung", "heart"], patients, spacing=np.full(12, 0.7), seed=1)
    assert (report["n"], report["n_patients"], report["unit"], report["resamples"]) == (12, 4, "mm", 1000)
    lung = report["per_structure"]["lung"]
    for metric in ("dice", "iou", "hd95", "msd"):
        lo, hi = lung[f"{metric}_ci"]
        assert lo <= lung[metric] <= hi and lo < hi
        mlo, mhi = report["macro"][f"{metric}_ci"]
        assert mlo <= report["macro"][metric] <= mhi
    scores = image_metrics(pred, truth, np.full(12, 0.7))
    assert lung["dice"] == pytest.approx(scores.dice[:, 0].mean(), abs=1e-6)

    # With every image its own patient the interval is narrower than with 4 patients of 3 images
    # whose images are identical (the resample unit is the patient, not the image).
    same = np.repeat(pred[::3], 3, axis=0), np.repeat(truth[::3], 3, axis=0)
    by_patient = segmentation_report(*same, ["lung", "heart"], patients, seed=1)["per_structure"]["lung"]
    by_image = segmentation_report(*same, ["lung", "heart"], [str(i) for i in range(12)], seed=1)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(by_patient["dice_ci"]) > 1.3 * width(by_image["per_structure"]["lung"]["dice_ci"])
    json.dumps(report, allow_nan=False)


def test_lesion_detection_and_recall() -> None:
    empty = np.zeros((S, S), dtype=bool)
    two = square(2, 2, side=4) | square(20, 20, side=5)
    one_found = square(3, 3, side=2) | square(10, 25, side=3)  # finds the first lesion, adds a false one
    pred, truth = stack([(one_found, two), (empty, empty), (square(8, 8, 3), empty), (two, two)])
    report = segmentation_report(pred, truth, ["nodule"], ["a", "b", "c", "d"], lesion_structures=["nodule"])
    lesion = report["per_structure"]["nodule"]["lesion"]
    assert (lesion["images_with_lesion"], lesion["images_without_lesion"]) == (2, 2)
    assert lesion["sensitivity"] == 1.0 and lesion["specificity"] == 0.5
    assert (lesion["lesions"], lesion["lesions_found"], lesion["lesion_recall"]) == (4, 3, 0.75)
    assert lesion["false_positive_lesions"] == 2
    lo, hi = lesion["lesion_recall_ci"]
    assert lo <= 0.75 <= hi
    # Diagonal neighbours are one lesion (8-connectivity).
    diagonal = np.zeros((S, S), dtype=bool)
    diagonal[5, 5] = diagonal[6, 6] = True
    assert image_metrics(diagonal[None, None], diagonal[None, None], lesion=[True]).lesions[0, 0] == 1
    assert "lesion" not in segmentation_report(pred, truth, ["nodule"], list("abcd"))["per_structure"]["nodule"]


def test_subgroups_by_manifest_column() -> None:
    pred, truth = stack([(square(5, 5), square(5, 5)), (square(5, 8), square(5, 5)), (square(5, 5), square(5, 5))])
    manifest = pd.DataFrame({"sex": ["F", "M", "F"], "age": [30.0, 70.0, np.nan]})
    report = segmentation_report(pred, truth, ["lung"], ["a", "b", "c"], manifest=manifest, age_bands=[0, 50, 100])
    sex = report["subgroups"]["sex"]
    assert sex["F"]["n"] == 2 and sex["F"]["per_structure"]["lung"]["dice"] == 1.0
    assert sex["M"]["per_structure"]["lung"]["dice"] == pytest.approx(0.7)
    assert sex["M"]["macro_dice"] == pytest.approx(0.7)
    assert set(report["subgroups"]["age_band"]) == {"0-50", "50-100"}


def test_bad_input_is_named() -> None:
    masks = np.zeros((2, 1, S, S), dtype=bool)
    with pytest.raises(ValueError, match="structure names"):
        segmentation_report(masks, masks, ["a", "b"], ["p", "q"])
    with pytest.raises(ValueError, match="not among the structures"):
        segmentation_report(masks, masks, ["lung"], ["p", "q"], lesion_structures=["nodule"])
    with pytest.raises(ValueError, match=r"spacing of image 1 is \[0.0, 0.0\]"):
        image_metrics(masks, masks, spacing=[0.5, 0.0])
    with pytest.raises(ValueError, match="patient_ids has 1 entries for 2 images"):
        segmentation_report(masks, masks, ["lung"], ["p"])
