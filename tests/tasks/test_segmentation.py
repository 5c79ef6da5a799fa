"""The segmentation kind: losses over overlapping and unannotated maps, validation Dice on known masks, its hooks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from radflow.tasks import NotBuiltError, get_task, metric_key
from radflow.tasks.evaluation import EvalData, ReportTable
from radflow.tasks.losses import segmentation_loss, soft_dice
from radflow.tasks.segmentation import dice_per_image, overlap_counts
from radflow.train.losses import make_loss

STRUCTURES = ["Left Lung", "Heart", "Nodule"]


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    out[top : top + side, left : left + side] = 1
    return out


def test_val_dice_on_known_masks() -> None:
    truth = np.zeros((2, 3, 8, 8), np.float32)
    preds = np.zeros((2, 3, 8, 8), np.float32)
    truth[0, 0] = _square(8, 0, 0, 4)  # 16 px
    preds[0, 0] = _square(8, 0, 0, 4) * 0.9  # the same 16 px above 0.5: Dice 1
    truth[1, 0] = _square(8, 0, 0, 4)
    preds[1, 0] = _square(8, 0, 0, 2) * 0.7  # 4 of 16 px: Dice 2*4/(4+16) = 0.4
    truth[0, 1] = _square(8, 4, 4, 4)
    preds[0, 1] = _square(8, 4, 4, 4) * 0.4  # below the threshold: nothing predicted, Dice 0
    preds[1, 1] = _square(8, 0, 0, 1)  # predicted where there is no heart: Dice 0
    truth[:, 2] = np.nan  # the nodule is not annotated on either image
    preds[:, 2] = 1.0
    kind = get_task("segmentation")
    kept = [kind.val_batch(preds[i : i + 1], truth[i : i + 1]) for i in range(2)]  # batch by batch
    metrics = kind.val_metrics(STRUCTURES, *(np.concatenate([k[i] for k in kept]) for i in (0, 1)))
    assert metrics["val_dice_Left_Lung"] == pytest.approx(0.7)
    assert metrics["val_dice_Heart"] == pytest.approx(0.0)
    assert "val_dice_Nodule" not in metrics  # unknown everywhere: no Dice at all, not a perfect one
    assert metrics["val_mean_dice"] == pytest.approx(0.35)


def test_a_structure_in_neither_mask_has_no_dice() -> None:
    counts = overlap_counts(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 4)))
    assert counts.tolist() == [[[0.0, 0.0, 0.0]]]
    assert np.isnan(dice_per_image(counts)).all()
    with pytest.raises(ValueError, match="one \\(N, K, H, W\\) shape"):
        overlap_counts(np.zeros((1, 1, 4, 4)), np.zeros((1, 2, 4, 4)))


def test_monitor_is_defined_when_some_val_image_shows_a_structure() -> None:
    kind = get_task("segmentation")
    assert kind.monitor_defined(STRUCTURES, np.array([[0, 1, np.nan]]))
    assert not kind.monitor_defined(STRUCTURES, np.array([[0, 0, np.nan], [0, 0, 0]]))


@pytest.mark.parametrize("name", get_task("segmentation").losses)
def test_losses_reward_the_true_overlapping_masks_and_skip_unannotated_ones(name: str) -> None:
    masks = torch.zeros(2, 2, 16, 16)
    masks[:, 0, 2:12, 2:12] = 1
    masks[:, 1, 4:8, 4:8] = 1  # inside structure 0: the two overlap
    good, bad = (masks * 2 - 1) * 6, -(masks * 2 - 1) * 6
    loss = make_loss(name, "segmentation")
    assert loss(good, masks) < 0.1 < loss(bad, masks)
    unknown = masks.clone()
    unknown[1, 1] = float("nan")
    wrong_there = good.clone()
    wrong_there[1, 1] = -good[1, 1]  # wrong only where the structure is not annotated
    assert loss(wrong_there, unknown) == pytest.approx(float(loss(good, masks)), abs=1e-3)
    logits = torch.zeros_like(masks, requires_grad=True)
    value = loss(logits, unknown)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and bool((logits.grad[1, 1] == 0).all())


def test_structure_weights_weigh_the_rare_structure_more() -> None:
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, :4] = 1
    masks[0, 1, :4] = 1
    logits = torch.where(masks > 0, 4.0, -4.0)
    logits[0, 1] = -4.0  # structure 1 missed entirely
    plain = float(soft_dice(logits, masks))
    rare_first = float(soft_dice(logits, masks, torch.tensor([9.0, 1.0])))
    rare_second = float(soft_dice(logits, masks, torch.tensor([1.0, 9.0])))
    assert rare_first < plain < rare_second
    weights = get_task("segmentation").pos_weight(np.array([[1, 1], [1, 0], [1, 0], [1, np.nan]]))
    assert weights is not None and weights.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="unknown segmentation loss"):
        segmentation_loss("ce", logits, masks)


def test_structures_no_train_image_shows_are_named() -> None:
    kind = get_task("segmentation")
    train = np.array([[1, 0, np.nan], [1, 0, np.nan]])
    assert kind.untrained_labels(STRUCTURES, train) == ["Heart", "Nodule"]
    assert kind.check_labels(STRUCTURES, train) == ["structure 'Heart' is in no mask of the train split."]


def _eval_data(masks: np.ndarray | None, scores: np.ndarray) -> EvalData:
    n = len(scores)
    manifest = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(n)], "sex": ["F", "M"] * (n // 2)})
    return EvalData(
        labels=STRUCTURES,
        split="test",
        targets=np.ones((n, 3)),
        scores=scores,
        manifest=manifest,
        val=lambda: None,
        stored_thresholds=None,
        unit=None,
        n_bootstrap=20,
        ci=0.95,
        calibration_bins=10,
        threshold_method="youden",
        target_sensitivity=0.9,
        age_bands=[0, 40, 200],
        masks=masks,
        lesion_structures=["Nodule"],
    )


def test_evaluation_scores_each_structure_into_gate_metrics_and_tables() -> None:
    kind = get_task("segmentation")
    masks = np.zeros((4, 3, 16, 16), bool)
    masks[:, 0, 2:10, 2:10] = True
    masks[:, 1, 8:14, 8:14] = True
    masks[:2, 2, 1:3, 12:14] = True  # a nodule on two of the four images
    scores = masks * 0.9
    scores[:, 1, 8:11] = 0.1  # half the heart missed: Dice 2*18/(18+36) = 2/3
    data = _eval_data(masks, scores.astype(np.float64))
    result = {"task": "segmentation", "labels": STRUCTURES, "config": {"ci": 0.95}, **kind.evaluate(data)}
    json.dumps(result)
    headline = {f"test_{k}": v for k, v in kind.headline(result).items()}
    assert headline["test_dice_Left_Lung"] == pytest.approx(1.0)
    assert headline["test_dice_Heart"] == pytest.approx(2 / 3)
    assert headline["test_mean_dice"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert headline["test_sensitivity_Nodule"] == pytest.approx(1.0)
    for gate in kind.gate_metrics:
        for metric in [gate.replace("<label>", metric_key(s)) for s in STRUCTURES] if "<label>" in gate else [gate]:
            assert np.isfinite(headline[metric]), metric
    tables = [block for block in kind.summary(result) if isinstance(block, ReportTable)]
    assert [t.title for t in tables] == ["masks at probability >= 0.5", "lesion detection"]
    for table in tables:
        for row in (row for rows in table.sections for row in rows):
            assert len(row) == len(table.columns) and all(isinstance(cell, str) for cell in row)
    # INT8 is judged against FP32 on the Dice the report headlines (here the heart's partial miss too).
    name, value = kind.quality_metric(STRUCTURES, scores, masks)
    assert name == "mean_dice" and value == pytest.approx(headline["test_mean_dice"])
    assert kind.quality_metric(STRUCTURES, np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8))) == ("mean_dice", None)
    with pytest.raises(ValueError, match=r"\(n, K, S, S\)"):
        kind.quality_metric(STRUCTURES, scores, np.ones((4, 3)))


def test_boolean_predicted_masks_score_as_the_maps_they_came_from() -> None:
    kind = get_task("segmentation")
    rng = np.random.default_rng(0)
    masks = rng.random((4, 3, 16, 16)) < 0.3
    maps = np.clip(masks * 0.7 + rng.random(masks.shape) * 0.4, 0, 1)
    from_maps = kind.evaluate(_eval_data(masks, maps))
    assert kind.evaluate(_eval_data(masks, maps >= 0.5)) == from_maps
    # Without a list of its own the evaluation counts the kind's lesion structures, here none.
    data = _eval_data(masks, maps)
    data.lesion_structures = None
    assert not any("lesion" in e for e in kind.evaluate(data)["metrics"]["per_structure"].values())
    # A structure not annotated on an image (NaN label) is scored as absent there, and the report says so.
    data.targets[1, 2] = np.nan
    kind.evaluate(data)
    assert data.warnings == [
        "Nodule: not annotated on 1 test image(s); the metrics score their empty masks as truth (the structure absent)."
    ]


def test_the_gallery_shows_the_lowest_dice_images_first() -> None:
    kind = get_task("segmentation")
    n = 10
    truth = np.zeros((n, 3, 16, 16), bool)
    truth[:, 0, 2:10, 2:10] = True
    pred = truth.copy()
    for i, rows in ((3, 6), (7, 2), (5, 4)):  # the left lung cut short: Dice 2/3 on image 3, 0 on 7, 0.4 on 5
        pred[i, 0, rows:] = False
    pred[9, 1, 0:2, 0:2] = True  # a false heart on image 9: its heart Dice is 0, its mean (1 + 0) / 2
    figures = kind.figures(STRUCTURES, truth, pred, {})
    assert [f.plot for f in figures] == ["worst_cases"] and figures[0].file == "worst_cases.png"
    gallery = figures[0]
    assert gallery.images[:4] == (7, 5, 9, 3) and len(gallery.images) == 8
    np.testing.assert_array_equal(gallery.args["pred"], pred[list(gallery.images)])
    np.testing.assert_array_equal(gallery.args["truth"], truth[list(gallery.images)])
    assert gallery.args["dice"][2, 1] == 0 and np.isnan(gallery.args["dice"][0, 1])  # no heart on image 7
    assert gallery.args["structures"] == STRUCTURES
    assert kind.figures(STRUCTURES, np.zeros((2, 3, 8, 8), bool), np.zeros((2, 3, 8, 8)), {}) == []


def test_hooks_built_elsewhere_say_what_is_missing() -> None:
    kind = get_task("segmentation")
    with pytest.raises(NotBuiltError, match=r"radflow\.runtime\.masks") as raised:
        kind.encode(np.zeros((3, 8, 8)), STRUCTURES, {}, None)
    assert raised.value.status_code == 501 and isinstance(raised.value, NotImplementedError)
    with pytest.raises(NotBuiltError, match=r"EvalData\.masks"):
        kind.evaluate(_eval_data(None, np.zeros((2, 3, 8, 8))))
    assert kind.drift_features(STRUCTURES) == ["area:Left Lung", "area:Heart", "area:Nodule"]


def _answer(height: int = 5, width: int = 7) -> dict:
    from radflow.runtime.masks import structure_answers

    masks = np.zeros((2, height, width), bool)
    masks[0, 1:3, 2:6] = True
    return {"structures": structure_answers(masks, ["Left Lung", "Heart"])}


def test_corrected_masks_validate_against_the_answer() -> None:
    from radflow.runtime.masks import encode_rle
    from radflow.tasks import InvalidFeedbackError, validate_feedback

    answer = _answer()
    corrected = np.zeros((5, 7), bool)
    corrected[0:4, 1:6] = True
    validate_feedback(answer, {"masks": {"Left Lung": encode_rle(corrected)}}, None)
    validate_feedback(answer, {"masks": {"Heart": {"size": [5, 7], "counts": [35]}}}, None)  # uncompressed, empty
    cases = [
        ({"masks": {"Left Lnug": encode_rle(corrected)}}, r"labels\.masks\['Left Lnug'\].*Did you mean 'Left Lung'"),
        ({"masks": {"Heart": encode_rle(np.zeros((7, 5), bool))}}, r"\.size is \[7, 5\]; the prediction's input"),
        ({"masks": {"Heart": {"size": [5, 7], "counts": "0~"}}}, r"labels\.masks\['Heart'\]: RLE counts hold '~'"),
        ({"masks": {"Heart": {"size": [5, 7], "counts": "1"}}}, r"covers 1 pixels and stops short of the 5 x 7"),
        ({"masks": {"Heart": {"size": [5, 7], "counts": "Z"}}}, r"truncated"),
        ({"masks": {"Heart": {"size": [5, 7]}}}, r"must be COCO RLE"),
        ({"Heart": 1}, r"sends 'labels': \{'masks'"),
    ]
    for labels, message in cases:
        with pytest.raises(InvalidFeedbackError, match=message) as raised:
            validate_feedback(answer, labels, None)
        assert raised.value.status_code == 422
    with pytest.raises(InvalidFeedbackError, match="not a value"):
        validate_feedback(answer, None, 3.0)
