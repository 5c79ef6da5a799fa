"""Losses of the task kinds, each ignoring unknown targets (NaN in the manifest).

Multi-label chest labels are often unknown for some findings (NIH lists only positives, CheXpert
marks uncertain ones): those entries must contribute nothing to the loss nor to its normaliser,
so the loss is a mean over known (image, label) pairs only.

This module imports torch; the kinds import it inside their training hooks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_bce", "masked_ce", "masked_l1"]


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over the known (non-NaN) targets only."""
    known = ~torch.isnan(targets)
    filled = torch.where(known, targets, torch.zeros_like(targets))
    loss = F.binary_cross_entropy_with_logits(logits, filled, pos_weight=pos_weight, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def masked_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from one-hot (or class-index) targets; rows with an unknown class are ignored."""
    if targets.ndim == 2:
        unknown = torch.isnan(targets).any(dim=1)
        index = torch.where(unknown, torch.full_like(unknown, -100, dtype=torch.long), targets.nan_to_num(0).argmax(1))
    else:
        index = torch.where(torch.isnan(targets), -100, targets.nan_to_num(0)).long()
    if bool((index == -100).all()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, index, ignore_index=-100)


def masked_l1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over known targets (regression targets are normalised beforehand)."""
    known = ~torch.isnan(targets)
    diff = (outputs - torch.where(known, targets, outputs.detach())).abs()
    return (diff * known).sum() / known.sum().clamp(min=1)
