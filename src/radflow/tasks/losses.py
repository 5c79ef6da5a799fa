"""Losses of the task kinds, each ignoring unknown targets (NaN in the manifest).

Multi-label chest labels are often unknown for some findings (NIH lists only positives, CheXpert
marks uncertain ones): those entries must contribute nothing to the loss nor to its normaliser,
so the loss is a mean over known (image, label) pairs only. Segmentation masks follow the same
rule per (image, structure): a structure not annotated on an image is a NaN map, left out.

This module imports torch; the kinds import it inside their training hooks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_bce", "masked_ce", "masked_l1", "segmentation_loss", "soft_dice"]


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


def _map_weights(logits: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-structure weights ``(K,)`` normalised to mean 1 (all ones without weights)."""
    if weights is None:
        return torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device)
    weights = weights.to(logits.dtype).to(logits.device)
    return weights * (len(weights) / weights.sum().clamp(min=1e-12))


def soft_dice(
    logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """One minus the soft Dice of sigmoid maps, per structure over the batch's known maps, weighted mean.

    Sums run over every known (image, structure) map of the batch (``(N, K, H, W)``, NaN maps are
    unknown) so a structure absent from one image does not make that image's Dice undefined; the
    ``smooth`` term makes a structure absent from the whole batch ask for an empty prediction.
    """
    known = ~torch.isnan(masks[:, :, :1, :1])
    target = torch.where(known, masks, torch.zeros_like(masks))
    probs = torch.sigmoid(logits) * known
    dims = (0, 2, 3)
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    dice = (2 * intersection + smooth) / (total + smooth)
    has_known = known.flatten(1).any(0)
    w = _map_weights(logits, weights) * has_known
    return ((1 - dice) * w).sum() / w.sum().clamp(min=1e-12)


def _pixel_bce(
    logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None, gamma: float = 0.0
) -> torch.Tensor:
    """Per-pixel binary cross-entropy (focal with ``gamma`` > 0) over the known maps, structure-weighted."""
    known = ~torch.isnan(masks)
    target = torch.where(known, masks, torch.zeros_like(masks))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma:
        p_true = torch.exp(-loss)  # the probability given to the true class
        loss = loss * (1 - p_true) ** gamma
    w = _map_weights(logits, weights).view(1, -1, 1, 1) * known
    return (loss * w).sum() / w.sum().clamp(min=1e-12)


def segmentation_loss(
    name: str, logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``dice_bce`` (soft Dice + pixel BCE, equal parts), ``dice``, ``bce`` or ``dice_focal`` (Dice + focal, gamma 2).

    Sigmoid per structure throughout: structures may overlap, so a softmax over them would not fit.
    """
    if name == "dice":
        return soft_dice(logits, masks, weights)
    if name == "bce":
        return _pixel_bce(logits, masks, weights)
    if name == "dice_focal":
        return soft_dice(logits, masks, weights) + _pixel_bce(logits, masks, weights, gamma=2.0)
    if name == "dice_bce":
        return soft_dice(logits, masks, weights) + _pixel_bce(logits, masks, weights)
    raise ValueError(f"unknown segmentation loss {name!r}")
