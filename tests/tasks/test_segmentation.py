"""The segmentation kind: losses over overlapping and unannotated maps, validation Dice on known masks, its hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radflow.tasks import NotBuiltError, get_task
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


def test_hooks_built_elsewhere_say_what_is_missing() -> None:
    kind = get_task("segmentation")
    with pytest.raises(NotBuiltError, match=r"radflow\.runtime\.masks") as raised:
        kind.encode(np.zeros((3, 8, 8)), STRUCTURES, {}, None)
    assert raised.value.status_code == 501 and isinstance(raised.value, NotImplementedError)
    with pytest.raises(NotBuiltError, match="--no-evaluate"):
        kind.headline({})
    assert kind.drift_features(STRUCTURES) == ["area:Left Lung", "area:Heart", "area:Nodule"]
