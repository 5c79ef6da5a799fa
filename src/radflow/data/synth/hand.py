"""Phantom hand radiographs in RSNA Pediatric Bone Age's layout (``radflow synth hand``).

A left hand, palm down: forearm (radius, ulna), carpal bones, five metacarpals and the phalanges,
inside a soft-tissue silhouette. Bone age (months) is drawn the way a reader assesses it
(Greulich-Pyle): the hand grows; carpal ossification centres appear one by one (capitate and
hamate in the first months, pisiform around 11 years); epiphyses appear and then fuse with
their shafts as the physeal gap closes in adolescence. Girls' bones are more mature at the same
bone age on the boys' scale, so sex shifts every maturity feature, as the atlas's separate
standards do. Pose, size and exposure vary from image to image.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from radflow.data.synth.common import check_common, draw_marker, image_rng, run_jobs, to_uint8, write_png
from radflow.data.synth.truth import write_masks, write_truth_tables

__all__ = ["HAND_STRUCTURES", "RSNA_COLUMNS", "hand_shape", "synth_hand"]

HAND_STRUCTURES: tuple[str, ...] = ("Hand",)
"""The hand phantom's ground-truth structure: its soft-tissue silhouette (hand, wrist and forearm)."""

RSNA_COLUMNS: tuple[str, ...] = ("id", "boneage", "male")
"""Columns of RSNA's boneage-training-dataset.csv."""

_ASPECT = 1.25
_FIRST_ID = 1377  # RSNA's training ids start here
# Bone age in the RSNA training set: mean ~127 months, sd ~41, range 1-228; 54 % boys.
_AGE_MEAN, _AGE_SD, _AGE_MAX = 127.0, 41.0, 228
_P_MALE = 0.54
_FEMALE_MATURITY = 1.12  # girls' features run ~12 % ahead on the boys' time scale

# Carpal ossification centres: (x, y) in hand units from the wrist, radii, and the month (boys)
# each appears — capitate/hamate in infancy, triquetrum ~2.5 y, lunate ~4 y, trapezium/trapezoid/
# scaphoid ~5.5-6 y, pisiform ~11 y.
_CARPALS = (
    ((0.0, -0.115), (0.036, 0.042), 3),
    ((-0.058, -0.11), (0.03, 0.036), 4),
    ((-0.072, -0.052), (0.026, 0.024), 30),
    ((-0.022, -0.045), (0.028, 0.025), 48),
    ((0.088, -0.11), (0.026, 0.026), 66),
    ((0.047, -0.125), (0.021, 0.022), 72),
    ((0.046, -0.05), (0.03, 0.02), 72),
    ((-0.095, -0.075), (0.016, 0.016), 132),
)
# Rays from thumb to little finger: metacarpal base (x, y), angle (degrees from vertical, + = toward
# the thumb), then bone lengths (metacarpal, proximal, [middle,] distal) and width.
_RAYS = (
    ((0.075, -0.15), 38.0, (0.16, 0.115, 0.085), 0.036),
    ((0.038, -0.17), 6.0, (0.26, 0.155, 0.095, 0.068), 0.034),
    ((0.0, -0.175), 0.0, (0.255, 0.165, 0.105, 0.07), 0.034),
    ((-0.036, -0.17), -6.0, (0.235, 0.155, 0.1, 0.068), 0.031),
    ((-0.07, -0.16), -13.0, (0.2, 0.125, 0.075, 0.062), 0.028),
)


def hand_shape(size: int) -> tuple[int, int]:
    """(height, width) of a phantom hand image of ``size``: width ``size``, height ``round(1.25 * size)``."""
    return round(size * _ASPECT), size


@dataclass(frozen=True)
class _Hand:
    index: int
    seed: int
    image_id: int
    boneage: int
    male: bool
    size: int
    out_file: str


def _plan(n: int, seed: int, size: int) -> list[_Hand]:
    rng = image_rng(seed, 10, 0)
    hands = []
    for i in range(n):
        male = bool(rng.random() < _P_MALE)
        age = int(np.clip(round(rng.normal(_AGE_MEAN, _AGE_SD)), 1, _AGE_MAX))
        image_id = _FIRST_ID + i
        hands.append(_Hand(i, seed, image_id, age, male, size, f"boneage-training-dataset/{image_id}.png"))
    return hands


class _Draw:
    """Hand-unit drawing: hand units scale with the child's growth, then pose onto the image."""

    SHIFT = 4

    def __init__(self, h: int, w: int, origin: tuple[float, float], scale: float, angle: float) -> None:
        self.h, self.w = h, w
        self.origin = np.array(origin) * w
        rad = math.radians(angle)
        self.rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]]) * scale * w
        self.k = scale * w

    def pts(self, xy: np.ndarray) -> np.ndarray:
        p = np.asarray(xy, np.float64).reshape(-1, 2) @ self.rot.T + self.origin
        return np.round(p * (1 << self.SHIFT)).astype(np.int32).reshape(-1, 1, 2)

    def line(self, layer: np.ndarray, xy: np.ndarray, thick: float, value: float) -> None:
        cv2.polylines(layer, [self.pts(xy)], False, value, max(1, round(thick * self.k)), cv2.LINE_AA, self.SHIFT)

    def ellipse(self, layer: np.ndarray, c: np.ndarray, axes: tuple[float, float], angle: float, value: float) -> None:
        centre = self.pts(np.asarray(c))[0, 0]
        size = (max(1, round(axes[0] * self.k * 16)), max(1, round(axes[1] * self.k * 16)))
        rot = math.degrees(math.atan2(self.rot[1, 0], self.rot[0, 0]))
        cv2.ellipse(
            layer, (int(centre[0]), int(centre[1])), size, angle + rot, 0, 360, value, -1, cv2.LINE_AA, self.SHIFT
        )


def _fusion(m: float, start: float, end: float) -> float:
    return float(np.clip((m - start) / (end - start), 0.0, 1.0))


def _bone(d: _Draw, layer: np.ndarray, p: np.ndarray, q: np.ndarray, width: float, cap: bool) -> None:
    """A tubular bone from p to q; ``cap`` draws the widened head at q."""
    d.line(layer, np.stack([p, q]), width, 1.0)
    axis = (q - p) / max(float(np.linalg.norm(q - p)), 1e-6)
    ang = math.degrees(math.atan2(axis[1], axis[0]))
    if cap:
        d.ellipse(layer, q, (width * 0.35, width * 0.62), ang, 1.0)
    inner = np.stack([p + axis * width * 0.5, q - axis * width * 0.5])
    d.line(layer, inner, width * 0.45, -0.2)  # medullary cavity: cortex shows as bright margins


def _disc(d: _Draw, layer: np.ndarray, c: np.ndarray, axis: np.ndarray, along: float, across: float) -> None:
    d.ellipse(layer, c, (along, across), math.degrees(math.atan2(axis[1], axis[0])), 1.0)


def _render(hand: _Hand) -> tuple[np.ndarray, np.ndarray]:
    """The image and its ``Hand`` mask (where the soft-tissue silhouette reaches half strength)."""
    rng = image_rng(hand.seed, 11, hand.index)
    h, w = hand_shape(hand.size)
    m = hand.boneage * (1.0 if hand.male else _FEMALE_MATURITY)  # maturity on the boys' scale
    growth = min(1.0, hand.boneage / 204.0) ** 0.75
    scale = (0.36 + 0.64 * growth) * (1.0 if hand.male else 0.93) * float(rng.normal(1.0, 0.04)) * 1.3
    d = _Draw(
        h, w, (0.5 + float(rng.normal(0, 0.02)), 1.08 + float(rng.normal(0, 0.01))), scale, float(rng.normal(0, 6))
    )
    soft: np.ndarray = np.zeros((h, w), np.float32)
    bone: np.ndarray = np.zeros((h, w), np.float32)
    d.line(soft, np.array([[0.0, 0.6], [0.0, -0.05]]), 0.3, 1.0)  # forearm and wrist
    d.line(soft, np.array([[0.0, -0.05], [-0.01, -0.36]]), 0.26, 1.0)  # palm
    spread = float(rng.normal(1.0, 0.15))
    epi_gap = 0.016 * (1.0 - _fusion(m, 150, 200))  # physes close between ~12.5 and ~16.5 years
    epi_seen = m >= 15
    for ray, ((bx, by), angle, lengths, width) in enumerate(_RAYS):
        a = math.radians(angle * spread + float(rng.normal(0, 2)))
        axis = np.array([math.sin(a), -math.cos(a)])
        p = np.array([bx, by])
        width *= 1.15 * (0.85 + 0.15 * growth)
        tip = p + axis * sum(lengths) * 1.06
        d.line(soft, np.stack([p, tip]), width * 2.0, 1.0)
        for k, length in enumerate(lengths):
            q = p + axis * length
            wk = width * (1.0 - 0.12 * k)
            # Ossified epiphyses: the heads of metacarpals 2-5, the base of every other bone. Before they
            # appear the cartilage is invisible and the shaft simply stops short.
            if k == 0 and ray > 0:
                _bone(d, bone, p, q - axis * (epi_gap + wk * 0.3), wk, cap=False)
                if epi_seen:
                    _disc(d, bone, q - axis * wk * 0.15, axis, wk * 0.17, wk * 0.5)
            else:
                _bone(d, bone, p + axis * (wk * 0.16 + epi_gap), q, wk, cap=True)
                if epi_seen:
                    _disc(d, bone, p + axis * wk * 0.08, axis, wk * 0.08, wk * 0.55)
            p = q + axis * 0.014
            a += math.radians(float(rng.normal(0, 3)))
            axis = np.array([math.sin(a), -math.cos(a)])
    for (cx, cy), (ax, ay), month in _CARPALS:
        if m >= month:
            grown = min(1.0, 0.35 + 0.65 * (m - month) / 60.0)
            d.ellipse(bone, np.array([cx, cy]), (ax * grown, ay * grown), float(rng.normal(0, 10)), 0.85)
    for x, width, appear, fuse in ((0.075, 0.085, 12, (170, 215)), (-0.07, 0.055, 84, (165, 210))):
        d.line(bone, np.array([[x, 0.6], [x, 0.025]]), width, 1.0)  # radius (thumb side), ulna
        d.line(bone, np.array([[x, 0.6], [x, 0.04]]), width * 0.45, -0.3)
        if m >= appear:
            gap = 0.02 * (1.0 - _fusion(m, *fuse))
            grown = min(1.0, 0.4 + 0.6 * (m - appear) / 80.0)
            d.ellipse(bone, np.array([x, 0.025 - gap - 0.012]), (width * 0.5 * grown, 0.014 * grown + 0.004), 0, 1.0)
    soft = cv2.GaussianBlur(soft, (0, 0), max(0.5, 0.012 * w))
    silhouette = np.clip(soft, 0, 1) >= 0.5
    bone = cv2.GaussianBlur(bone, (0, 0), max(0.4, 0.002 * w))
    att = 0.3 * np.clip(soft, 0, 1) + 0.4 * np.clip(bone, -0.2, 1.2) * np.clip(soft * 2, 0, 1)
    att = att + rng.standard_normal(att.shape, dtype=np.float32) * (0.01 * np.sqrt(att + 0.05))
    lo = float(rng.uniform(-0.08, 0.02))
    img = np.power(np.clip((att - lo) / (float(rng.uniform(0.72, 0.86)) - lo), 0, 1), float(rng.uniform(0.8, 1.2)))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), max(0.4, 0.002 * w))
    img = np.clip(img, 0, 1)
    draw_marker(img, "L", 0.08, 0.08)
    return img, silhouette


def _draw_and_write(job: tuple[_Hand, str, bool]) -> None:
    hand, out, with_masks = job
    img, silhouette = _render(hand)
    write_png(Path(out) / hand.out_file, to_uint8(img))
    if with_masks:
        write_masks(Path(out), hand.out_file, HAND_STRUCTURES, silhouette[None])


def synth_hand(
    out: Path, n: int, seed: int, size: int = 256, workers: int | None = None, masks: bool = False
) -> dict[str, Any]:
    """Write ``n`` phantom hand radiographs under ``out`` in RSNA bone age's layout; returns a summary.

    ``out/boneage-training-dataset.csv`` has columns ``id,boneage,male`` (months, ``True``/``False``);
    images are ``out/boneage-training-dataset/{id}.png``. The same ``seed`` gives the same bytes for any ``workers``.
    ``masks`` adds each hand's exact silhouette mask (:mod:`radflow.data.synth.truth`).
    """
    check_common(n, seed, size, workers)
    start = time.perf_counter()
    out = Path(out)
    hands = _plan(n, seed, size)
    (out / "boneage-training-dataset").mkdir(parents=True, exist_ok=True)
    used = run_jobs(_draw_and_write, [(hd, str(out), masks) for hd in hands], workers)
    with (out / "boneage-training-dataset.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(RSNA_COLUMNS)
        for hd in hands:
            writer.writerow([hd.image_id, hd.boneage, "True" if hd.male else "False"])
    ages = np.array([hd.boneage for hd in hands], dtype=np.float64)
    height, width = hand_shape(size)
    truth = {}
    if masks:
        images = [(hd.out_file, str(hd.image_id), str(hd.image_id)) for hd in hands]
        shown = write_truth_tables(out, HAND_STRUCTURES, images)
        truth = {"masks": {"structures": list(HAND_STRUCTURES), "images_showing": shown}}
    return {
        **truth,
        "out": str(out),
        "kind": "hand",
        "images": n,
        "boys": sum(hd.male for hd in hands),
        "boneage_mean": round(float(ages.mean()), 1),
        "boneage_sd": round(float(ages.std()), 1),
        "width": width,
        "height": height,
        "seed": seed,
        "workers": used,
        "seconds": round(time.perf_counter() - start, 2),
    }
