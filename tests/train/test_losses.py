"""Losses ignore unknown (NaN) targets exactly."""

from __future__ import annotations

import math

import pytest
import torch

from radflow.errors import ConfigError
from radflow.train.losses import make_loss, masked_bce, masked_ce, masked_l1

NAN = float("nan")


def _bce(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_masked_bce_averages_over_known_targets_only() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, NAN], [0.0, NAN]])
    expected = (_bce(2.0, 1.0) + _bce(0.5, 0.0)) / 2
    assert float(masked_bce(logits, targets)) == pytest.approx(expected, rel=1e-6)
    # A wildly wrong logit on an unknown label changes nothing.
    logits[0, 1] = 100.0
    assert float(masked_bce(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_masked_bce_pos_weight_scales_positive_terms() -> None:
    logits, targets = torch.tensor([[0.3, 0.3]]), torch.tensor([[1.0, 0.0]])
    loss = masked_bce(logits, targets, pos_weight=torch.tensor([4.0, 4.0]))
    assert float(loss) == pytest.approx((4 * _bce(0.3, 1.0) + _bce(0.3, 0.0)) / 2, rel=1e-6)


def test_masked_bce_gradient_of_unknown_entries_is_zero() -> None:
    logits = torch.zeros(2, 2, requires_grad=True)
    masked_bce(logits, torch.tensor([[1.0, NAN], [NAN, 0.0]])).backward()
    assert logits.grad is not None
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad[0, 0] != 0


def test_masked_ce_skips_rows_with_unknown_class() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [NAN, NAN, NAN]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert float(masked_ce(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_masked_l1_ignores_nan() -> None:
    assert float(masked_l1(torch.tensor([[1.0], [5.0]]), torch.tensor([[3.0], [NAN]]))) == pytest.approx(2.0)


def test_loss_that_does_not_fit_task_is_rejected() -> None:
    with pytest.raises(ConfigError, match="does not fit a regression dataset"):
        make_loss("bce", "regression")
