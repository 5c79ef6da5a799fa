"""One phantom chest study to pixels: the anatomy and findings as attenuation layers, combined,
posed as a technologist positions a patient, then exposed and processed as a radiograph is.

Every random draw of an image comes from one generator, in a fixed order of steps, so the same
study always gives the same pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from radflow.data.synth.canvas import Canvas
from radflow.data.synth.chest_anatomy import (
    gastric_bubble,
    heart,
    lung_fields,
    lung_markings,
    mediastinum,
    parenchymal_texture,
    skeleton,
    soft_tissue,
    support_devices,
    trachea,
)
from radflow.data.synth.chest_findings import air_space_fill, pneumothorax, visceral_pleura
from radflow.data.synth.chest_plan import Study, chest_shape
from radflow.data.synth.common import draw_marker, image_rng

__all__ = ["render_chest"]


def render_chest(s: Study) -> np.ndarray:
    """Draw one study as display grey levels in [0, 1] (0 = black), float32."""
    rng = image_rng(s.seed, 2, s.index)
    c = Canvas(*chest_shape(s.size))
    body = soft_tissue(c, s.anatomy)
    lungs = lung_fields(c, s.anatomy)
    collapse = pneumothorax(c, s, lungs)
    markings = lung_markings(c, rng, lungs, collapse.aerated)
    texture = parenchymal_texture(c, rng)
    cardiac, central, airway = heart(c, s), mediastinum(c), trachea(c)
    fill = air_space_fill(c, s, lungs, rng)
    bone = skeleton(c, s, rng)
    dev = support_devices(c, s, rng)
    if collapse.space is not None:
        dev += visceral_pleura(c, s, lungs, collapse)

    # Attenuation: air in the lungs where heart, mediastinum and fluid do not displace it.
    air = lungs.mask * (1 - 0.85 * cardiac) * (1 - central) * (1 - fill)
    if collapse.space is not None:
        air = air + 0.25 * collapse.space * (1 - fill)  # no lung tissue in the pleural space: darker still
    air += gastric_bubble(c, s.anatomy) * 0.5 + airway * 0.25 * (1 - lungs.mask)
    att = 0.5 * body - 0.3 * air + 0.05 * cardiac + 0.04 * central + 0.05 * fill * lungs.mask
    # Bone shows less through the dense heart and mediastinum, as on processed films.
    dense = np.maximum(cardiac, central)
    att += (0.1 * markings + 0.012 * texture) * lungs.mask + 0.3 * bone * body * (1 - 0.6 * dense) + 0.18 * dev

    img = _expose(c, _pose(att, rng), rng)
    # Side marker on the patient's left (image right), as technologists place it.
    draw_marker(img, "L", 0.87, 0.07)
    return img


def _pose(att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small rotation, magnification and shift, as a technologist positions a patient."""
    h, w = att.shape
    m = np.asarray(cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.normal(0, 2.0)), float(rng.uniform(0.95, 1.05))))
    m[:, 2] = m[:, 2] + rng.normal(0, 0.015, 2) * w
    return cv2.warpAffine(att, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _expose(c: Canvas, att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure and processing: quantum noise, window/gamma, unsharp-mask edge enhancement."""
    att = att + rng.standard_normal(att.shape, dtype=np.float32) * (0.012 * np.sqrt(np.abs(att) + 0.05))
    lo, hi = float(rng.uniform(-0.03, 0.03)), float(rng.uniform(0.74, 0.86))
    img = np.power(np.clip((att - lo) / (hi - lo), 0, 1), float(rng.uniform(0.85, 1.2)))
    img = img + float(rng.uniform(0.2, 0.5)) * (img - c.blur(img, 0.03))
    img = cv2.GaussianBlur(img, (0, 0), max(0.4, 0.0025 * c.w))
    return np.clip(img, 0, 1).astype(np.float32)
