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
    Lungs,
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

__all__ = ["MASK_STRUCTURES", "render_chest", "render_chest_with_masks"]

MASK_STRUCTURES: tuple[str, ...] = (
    "Right Lung",
    "Left Lung",
    "Heart",
    "Pleural Effusion",
    "Pneumothorax",
    "Lung Lesion",
)
"""Structures of the phantom's ground-truth masks, in bit order (the patient's right lung is on the image's left)."""


def render_chest(s: Study) -> np.ndarray:
    """Draw one study as display grey levels in [0, 1] (0 = black), float32."""
    return _render(s, None)


def render_chest_with_masks(s: Study) -> tuple[np.ndarray, np.ndarray]:
    """The study's image (as :func:`render_chest`, same pixels) and its exact masks ``(K, H, W)`` (MASK_STRUCTURES).

    Each mask is what the renderer drew, posed with the image: a lung is its outline's area not
    covered by the heart or mediastinum; the heart its silhouette; the effusion the fluid below its
    meniscus inside the lung outline; the pneumothorax the pleural air space; the lesion the nodule
    or mass inside the lung outline. A drawn layer counts as inside where it reaches half strength.
    """
    layers: dict[str, np.ndarray] = {}
    img = _render(s, layers)
    return img, np.stack([layers[name] for name in MASK_STRUCTURES])


def _render(s: Study, masks: dict[str, np.ndarray] | None) -> np.ndarray:
    rng = image_rng(s.seed, 2, s.index)
    c = Canvas(*chest_shape(s.size))
    body = soft_tissue(c, s.anatomy)
    lungs = lung_fields(c, s.anatomy)
    collapse = pneumothorax(c, s, lungs)
    markings = lung_markings(c, rng, lungs, collapse.aerated)
    texture = parenchymal_texture(c, rng)
    cardiac, central, airway = heart(c, s), mediastinum(c), trachea(c)
    regions: dict[str, np.ndarray] = {}
    fill = air_space_fill(c, s, lungs, rng, regions)
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

    pose = _pose_matrix(att.shape, rng)
    img = _expose(c, _warp(att, pose), rng)
    if masks is not None:
        masks.update(_truth(c, s, lungs, collapse.space, cardiac, central, regions, pose))
    # Side marker on the patient's left (image right), as technologists place it.
    draw_marker(img, "L", 0.87, 0.07)
    return img


def _pose_matrix(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Small rotation, magnification and shift, as a technologist positions a patient."""
    h, w = shape
    m = np.asarray(cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.normal(0, 2.0)), float(rng.uniform(0.95, 1.05))))
    m[:, 2] = m[:, 2] + rng.normal(0, 0.015, 2) * w
    return m


def _warp(layer: np.ndarray, m: np.ndarray) -> np.ndarray:
    h, w = layer.shape
    return cv2.warpAffine(layer, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _truth(
    c: Canvas,
    s: Study,
    lungs: Lungs,
    space: np.ndarray | None,
    cardiac: np.ndarray,
    central: np.ndarray,
    regions: dict[str, np.ndarray],
    pose: np.ndarray,
) -> dict[str, np.ndarray]:
    """Ground-truth masks of what was drawn, posed like the image (see :func:`render_chest_with_masks`)."""
    outline = {}
    for side in (-1, 1):
        outline[side] = c.layer()
        c.poly(outline[side], lungs.outlines[side])
    lung_area = np.maximum(outline[-1], outline[1])
    covered = np.maximum(cardiac, central)
    soft = {
        "Right Lung": np.minimum(outline[-1], 1 - covered),
        "Left Lung": np.minimum(outline[1], 1 - covered),
        "Heart": cardiac,
        "Pleural Effusion": np.minimum(regions["effusion"], lung_area),
        "Pneumothorax": space if space is not None else c.layer(),
        "Lung Lesion": np.minimum(regions["lesion"], lung_area),
    }
    return {name: _warp(layer.astype(np.float32), pose) >= 0.5 for name, layer in soft.items()}


def _expose(c: Canvas, att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure and processing: quantum noise, window/gamma, unsharp-mask edge enhancement."""
    att = att + rng.standard_normal(att.shape, dtype=np.float32) * (0.012 * np.sqrt(np.abs(att) + 0.05))
    lo, hi = float(rng.uniform(-0.03, 0.03)), float(rng.uniform(0.74, 0.86))
    img = np.power(np.clip((att - lo) / (hi - lo), 0, 1), float(rng.uniform(0.85, 1.2)))
    img = img + float(rng.uniform(0.2, 0.5)) * (img - c.blur(img, 0.03))
    img = cv2.GaussianBlur(img, (0, 0), max(0.4, 0.0025 * c.w))
    return np.clip(img, 0, 1).astype(np.float32)
