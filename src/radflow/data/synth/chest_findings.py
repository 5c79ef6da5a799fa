"""The five drawn findings, each with a severity that runs down to barely visible.

Pneumothorax (collapsed lung edge, no markings outside it), and the findings that displace air:
Pleural Effusion (basal meniscus, blunted costophrenic angle), Consolidation (patchy opacity with
air bronchograms) and Lung Lesion (round nodule or lobulated mass). Cardiomegaly is the heart's
width (:func:`radflow.data.synth.chest_anatomy.heart`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from radflow.data.synth.canvas import Canvas
from radflow.data.synth.chest_anatomy import Lungs
from radflow.data.synth.chest_plan import Study

__all__ = ["Collapse", "air_space_fill", "pneumothorax", "visceral_pleura"]


@dataclass(frozen=True)
class Collapse:
    """What a pneumothorax leaves: the still-aerated lung, the pleural air space (None: no pneumothorax)."""

    aerated: np.ndarray
    space: np.ndarray | None
    outline: np.ndarray
    """The collapsed lung's outline (the right lung's own outline when there is none)."""


def pneumothorax(c: Canvas, s: Study, lungs: Lungs) -> Collapse:
    """The lung collapses toward its lower hilum; outside it, air without markings."""
    cx = 0.5
    ptx_side, ptx = s.pneumothorax
    if not ptx_side:
        return Collapse(aerated=lungs.mask, space=None, outline=lungs.outlines[-1])
    anchor = np.array([cx + ptx_side * 0.1, 0.68])
    shrink = 1.0 - (0.04 + 0.3 * ptx)
    collapsed = anchor + (lungs.outlines[ptx_side] - anchor) * np.array([shrink, 1.0 - (1.0 - shrink) * 0.8])
    mask = c.layer()
    for side, o in lungs.outlines.items():
        c.poly(mask, collapsed if side == ptx_side else o)
    aerated = c.blur(mask, 0.004) * lungs.mask
    return Collapse(aerated=aerated, space=np.clip(lungs.mask - aerated, 0, 1), outline=collapsed)


def visceral_pleura(c: Canvas, s: Study, lungs: Lungs, collapse: Collapse) -> np.ndarray:
    """The visceral pleural line at the collapsed lung's edge, fainter for a small pneumothorax."""
    line = c.layer()
    c.line(line, collapse.outline[:18], 0.004, 1.0)
    return c.blur(line, 0.0015) * lungs.mask * (0.1 + 0.12 * s.pneumothorax[1])


def air_space_fill(
    c: Canvas, s: Study, lungs: Lungs, rng: np.random.Generator, regions: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Findings that displace air, as an opacity in [0, 1]: fluid, consolidation, nodule.

    ``regions``, when given, receives the drawn extent of the fluid (``effusion``: below the
    meniscus line) and of the nodule (``lesion``: its ellipses before blurring), for ground-truth masks.
    """
    fill = c.layer()
    effusion = c.layer()
    _effusion(c, s, lungs, fill, effusion)
    if s.consolidation > 0:
        _consolidation(c, s, lungs, rng, fill)
    nodule = _lesion(c, s, lungs, rng, fill) if s.lesion > 0 else c.layer()
    if regions is not None:
        regions["effusion"], regions["lesion"] = effusion, nodule
    return np.clip(fill, 0, 1)


def _effusion(c: Canvas, s: Study, lungs: Lungs, fill: np.ndarray, region: np.ndarray) -> None:
    cx, b = 0.5, s.anatomy.body
    h, w = c.h, c.w
    yy = (np.arange(h, dtype=np.float32) / w)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w)[None, :]
    for side, sev in zip((-1, 1), s.effusion, strict=True):
        if sev <= 0:
            continue
        o = lungs.outlines[side]
        cp_y = float(o[15, 1])
        lateral = np.clip((side * (xx - cx) - 0.07) / (0.375 * b - 0.07), 0, 1)
        height = 0.03 + 0.3 * sev  # from a blunted angle to a third of the lung
        level = cp_y - height * (0.3 + 0.7 * lateral**1.5)  # meniscus: higher against the chest wall
        half = (xx - cx) * side > 0
        fill += half * (0.5 + 0.5 * np.tanh((yy - level) / 0.02)) * (0.7 + 0.3 * sev)  # soft upper edge
        np.maximum(region, half * (yy >= level), out=region)  # the fluid's extent: below the meniscus


def _consolidation(c: Canvas, s: Study, lungs: Lungs, rng: np.random.Generator, fill: np.ndarray) -> None:
    a = s.anatomy
    cx, b = 0.5, a.body
    h, w = c.h, c.w
    side_f, fy, fx = a.consolidation_zone
    o = lungs.outlines[int(side_f)]
    y0 = a.apex + fy * (float(o[15, 1]) - a.apex) * 0.9
    x0 = cx + side_f * (0.09 + fx * 0.23 * b)
    r = 0.05 + 0.09 * s.consolidation
    blob = c.layer()
    c.ellipse(blob, (x0, y0), (r, r * 0.8), float(rng.uniform(0, 180)))
    patches = cv2.resize(
        rng.random((h // 10 + 2, w // 10 + 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    patchy = c.blur(blob, r * 0.35) * np.clip((patches - 0.2) * 2.5, 0, 1)
    if s.consolidation > 0.45:  # air bronchograms: dark branching airways inside the opacity
        br = c.layer()
        for _ in range(3):
            ang = rng.uniform(0, 2 * np.pi)
            end = np.array([x0 + r * 0.9 * np.cos(ang), y0 + r * 0.9 * np.sin(ang)])
            c.line(br, np.stack([np.array([x0, y0]) + rng.normal(0, r * 0.2, 2), end]), 0.006)
        patchy *= 1 - 0.6 * c.blur(br, 0.002)
    fill += patchy * (0.35 + 0.65 * s.consolidation)


def _lesion(c: Canvas, s: Study, lungs: Lungs, rng: np.random.Generator, fill: np.ndarray) -> np.ndarray:
    side_l, frac = s.anatomy.lesion_xy
    o = lungs.outlines[int(side_l)]
    hilum = lungs.hila[int(side_l)]
    p = hilum + (o[int(frac * 15)] - hilum) * 0.6
    r = 0.008 + 0.042 * s.lesion
    nod = c.layer()
    c.ellipse(nod, (float(p[0]), float(p[1])), (r, r * float(rng.uniform(0.85, 1.0))), float(rng.uniform(0, 180)))
    if s.lesion > 0.5:  # masses are lobulated
        q = p + rng.normal(0, r * 0.5, 2)
        c.ellipse(nod, (float(q[0]), float(q[1])), (r * 0.6, r * 0.55), 0)
    fill += c.blur(nod, r * 0.25) * (0.45 + 0.55 * s.lesion)
    return nod
