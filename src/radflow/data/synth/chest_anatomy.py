"""The normal chest, drawn as attenuation layers: soft tissue, lungs with vessel markings, heart,
mediastinum and trachea, ribs, clavicles, spine, shoulder girdle, gastric bubble, and support devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from radflow.data.synth.canvas import Canvas
from radflow.data.synth.chest_plan import Anatomy, Study

__all__ = [
    "Lungs",
    "gastric_bubble",
    "heart",
    "lung_fields",
    "lung_markings",
    "mediastinum",
    "parenchymal_texture",
    "skeleton",
    "soft_tissue",
    "support_devices",
    "trachea",
]

_AP_MAGNIFICATION = 1.08  # the heart is further from the detector on AP films


def _lung(a: Anatomy, side: int) -> np.ndarray:
    """Outline of one lung (side -1: patient's right, drawn on the image's left), in body units."""
    b, cx = a.body, 0.5
    half = 0.375 * b
    top, widest = a.apex, 0.64
    cp = (a.dome_r if side < 0 else a.dome_l) + 0.1
    dome = a.dome_r if side < 0 else a.dome_l
    t = np.linspace(0.0, 1.0, 16)
    y_lat = top + t * (cp - top)
    rise = np.clip((y_lat - top) / (widest - top), 0.0, 1.0)
    w_lat = (0.1 + (half - 0.1) * np.sin(rise * np.pi / 2) ** 0.55) * (1 - 0.04 * np.clip((y_lat - widest) / 0.2, 0, 1))
    lateral = np.stack([cx + side * w_lat, y_lat], 1)
    u = np.linspace(0.0, 1.0, 14)[1:]
    x_d = w_lat[-1] + (0.075 - w_lat[-1]) * u
    base = cp + (dome + 0.07 - cp) * u
    y_d = base - (cp - 0.04 - dome) * np.sin(np.pi * np.clip(u * 1.1, 0, 1)) ** 0.7
    diaphragm = np.stack([cx + side * x_d, y_d], 1)
    v = np.linspace(1.0, 0.0, 10)[1:]
    medial = np.stack([cx + side * (0.055 + 0.02 * v), top + 0.05 + v * (dome + 0.02 - top)], 1)
    return np.concatenate([lateral, diaphragm, medial])


def _vessels(c: Canvas, rng: np.random.Generator, layer: np.ndarray, outline: np.ndarray, hilum: np.ndarray) -> None:
    # Pulmonary vessels branch from the hilum and taper toward the periphery; the hilum itself is dense.
    c.ellipse(layer, (float(hilum[0]), float(hilum[1])), (0.03, 0.06), 0, 0.8)
    count, n = 26, 7
    edges = outline[rng.integers(len(outline), size=count)]
    ends = hilum + (edges - hilum) * rng.uniform(0.7, 0.95, (count, 1))  # (count, 2)
    t = np.linspace(0, 1, n)[None, :, None]  # (1, n, 1)
    along = ends - hilum
    normal = np.stack([-along[:, 1], along[:, 0]], 1)[:, None, :]
    wobble = np.cumsum(rng.normal(0, 0.1, (count, n)), 1)[:, :, None] * np.sin(np.pi * t)
    paths = hilum + t * along[:, None, :] + wobble * normal * 0.25  # (count, n, 2)
    # One call per segment rank: every vessel's k-th segment has the same calibre and density.
    fixed = c.pts(paths).reshape(count, n, 2)
    for k in range(n - 1):
        tk = float(t[0, k, 0])
        segments = [fixed[i, k : k + 2] for i in range(count)]
        thick = c.px(0.009 * (1 - tk) ** 1.5 + 0.002)
        cv2.polylines(layer, segments, False, 0.85 - 0.55 * tk, thick, cv2.LINE_AA, c.SHIFT)
    starts = paths[np.arange(count).repeat(2), rng.integers(2, n - 1, 2 * count)]
    tips = starts + along.repeat(2, 0) * rng.uniform(0.1, 0.3, (2 * count, 1)) + rng.normal(0, 0.04, (2 * count, 2))
    bends = (starts + tips) / 2 + rng.normal(0, 0.01, starts.shape)
    branches = c.pts(np.stack([starts, bends, tips], 1)).reshape(-1, 3, 2)
    cv2.polylines(layer, list(branches), False, 0.35, c.px(0.003), cv2.LINE_AA, c.SHIFT)


def _ribs(c: Canvas, a: Anatomy, layer: np.ndarray, rng: np.random.Generator) -> None:
    cx, half = 0.5, 0.39 * a.body
    for side in (-1, 1):
        for i in range(10):
            y0 = a.apex - 0.015 + i * a.rib_gap
            reach = half * (0.55 + 0.45 * min(1.0, (i + 1) / 4))
            t = np.linspace(0, 1, 12)
            x = cx + side * (0.035 + t * reach)
            y = y0 - 0.035 * np.sin(np.pi * t * 0.8) + 0.05 * t**3 + 0.012 * i * t
            posterior = np.stack([x, y], 1)
            thick = 0.024 + 0.0012 * i
            c.line(layer, posterior, thick, 0.42)
            c.line(layer, posterior, thick * 0.5, -0.1)  # medulla: the cortex shows as two bright edges
            s = np.linspace(0, 1, 8)
            ax = x[-1] - side * s * reach * 0.62
            ay = y[-1] + 0.03 * np.sin(np.pi * s * 0.5) + s * 0.11
            c.line(layer, np.stack([ax, ay], 1), thick * 0.9, 0.22)  # anterior ribs are fainter
        clav = np.array(
            [[cx + side * 0.05, 0.2], [cx + side * 0.17, 0.175], [cx + side * 0.3, 0.16], [cx + side * 0.4, 0.12]]
        )
        clav[:, 1] += rng.normal(0, 0.004, 4)
        c.line(layer, clav, 0.026, 0.6)


def _spine(c: Canvas, layer: np.ndarray) -> None:
    y = 0.02
    while y < 1.2:
        w = 0.03 + 0.012 * min(1.0, y)
        h = 0.038 + 0.01 * min(1.0, y)
        c.poly(layer, np.array([[0.5 - w, y], [0.5 + w, y], [0.5 + w, y + h], [0.5 - w, y + h]]), 0.28)
        for side in (-1, 1):
            c.ellipse(layer, (0.5 + side * w * 0.6, y + h * 0.4), (0.006, 0.01), 0, 0.35)
        y += h + 0.007


def _devices(c: Canvas, s: Study, rng: np.random.Generator, layer: np.ndarray) -> None:
    cx = 0.5
    for kind in s.devices:
        if kind == "ett":
            tip = 0.33 + float(rng.uniform(-0.03, 0.04))
            c.line(layer, np.array([[cx + 0.01, -0.01], [cx + 0.005, tip * 0.5], [cx, tip]]), 0.012, 0.55)
        elif kind == "ng":
            path = np.array(
                [[cx + 0.02, -0.01], [cx + 0.015, 0.4], [cx + 0.03, 0.75], [cx + 0.12, 0.92], [cx + 0.2, 0.97]]
            )
            c.line(layer, path + rng.normal(0, 0.005, path.shape), 0.007, 0.75)
        elif kind == "line":
            side = -1 if rng.random() < 0.7 else 1
            path = np.array(
                [[cx + side * 0.33, 0.14], [cx + side * 0.2, 0.2], [cx + side * 0.05, 0.3], [cx - 0.02, 0.42]]
            )
            c.line(layer, path + rng.normal(0, 0.006, path.shape), 0.006, 0.9)
        elif kind == "ecg":
            for _ in range(int(rng.integers(2, 5))):
                p = (float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85)))
                c.ellipse(layer, p, (0.018, 0.018), 0, 0.35)
                c.ellipse(layer, p, (0.007, 0.007), 0, 1.2)
        elif kind == "chest_tube":
            side = s.pneumothorax[0]
            path = np.array(
                [[cx + side * 0.46, 0.85], [cx + side * 0.34, 0.62], [cx + side * 0.24, 0.35], [cx + side * 0.16, 0.26]]
            )
            c.line(layer, path, 0.016, 0.45)
            c.line(layer, path, 0.005, 0.7)


def support_devices(c: Canvas, s: Study, rng: np.random.Generator) -> np.ndarray:
    """Tubes, lines, ECG leads and chest drains of the study, on a layer of their own."""
    layer = c.layer()
    _devices(c, s, rng, layer)
    return layer


@dataclass(frozen=True)
class Lungs:
    """Both lung fields: outlines and hila in body units (key -1: patient's right, +1: left) and their mask."""

    outlines: dict[int, np.ndarray]
    hila: dict[int, np.ndarray]
    mask: np.ndarray


def soft_tissue(c: Canvas, a: Anatomy) -> np.ndarray:
    """Neck, shoulders and chest wall, thicker in the middle."""
    cx, b = 0.5, a.body
    body = c.layer()
    top = 0.04
    half = np.array(
        [[0.09, -0.1], [0.1, top + 0.04], [0.46 * b, 0.1], [0.52 * b, 0.2], [0.47 * b, 0.6], [0.47 * b, 1.3]]
    )
    shift = np.array([cx, 0.0])
    c.poly(body, np.concatenate([half + shift, (half * np.array([-1.0, 1.0]) + shift)[::-1]]))
    body = c.blur(body, 0.02)
    xs = (np.arange(c.w, dtype=np.float32) / c.w - cx) / (0.6 * b)
    body *= (0.55 + 0.45 * np.sqrt(np.clip(1 - xs**2, 0, 1)))[None, :]
    return body


def lung_fields(c: Canvas, a: Anatomy) -> Lungs:
    cx = 0.5
    outlines = {side: _lung(a, side) for side in (-1, 1)}
    hila = {side: np.array([cx + side * 0.1, 0.5]) for side in (-1, 1)}
    mask = c.layer()
    for outline in outlines.values():
        c.poly(mask, outline)
    return Lungs(outlines=outlines, hila=hila, mask=c.blur(mask, 0.008))


def lung_markings(c: Canvas, rng: np.random.Generator, lungs: Lungs, aerated: np.ndarray) -> np.ndarray:
    """Vessel markings of both lungs, only where lung is aerated (none in a pneumothorax)."""
    markings = c.layer()
    for side in (-1, 1):
        _vessels(c, rng, markings, lungs.outlines[side], lungs.hila[side])
    return c.blur(markings, 0.003) * aerated


def parenchymal_texture(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Smooth low-frequency noise, so lungs are not flat."""
    h, w = c.h, c.w
    return cv2.resize(
        rng.normal(0, 1, (h // 12 + 2, w // 12 + 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )


def heart(c: Canvas, s: Study) -> np.ndarray:
    """The cardiac silhouette: as wide as the study's cardiothoracic ratio says, magnified on AP films."""
    a = s.anatomy
    cx, b = 0.5, a.body
    layer = c.layer()
    ctr = s.ctr * (_AP_MAGNIFICATION if s.ap else 1.0)
    span = ctr * 2 * 0.375 * b  # heart width from cardiothoracic ratio and inner thorax width
    left, right = span * 0.64, span * 0.36
    hcx = cx + (left - right) / 2
    theta = math.radians(a.heart_tilt)
    bh = 0.14 * b * (0.85 + 0.3 * s.ctr)
    ah = math.sqrt(max(((span / 2) ** 2 - (bh * math.sin(theta)) ** 2) / math.cos(theta) ** 2, 1e-4))
    c.ellipse(layer, (hcx, a.heart_y), (ah, bh), a.heart_tilt)
    c.ellipse(layer, (cx - right * 0.5, a.heart_y - 0.02), (right * 0.55, bh * 0.8), 0)  # right atrium border
    return c.blur(layer, 0.006)


def mediastinum(c: Canvas) -> np.ndarray:
    cx = 0.5
    layer = c.layer()
    c.poly(
        layer,
        np.array(
            [
                [cx - 0.06, -0.1],
                [cx + 0.06, -0.1],
                [cx + 0.075, 0.45],
                [cx + 0.05, 0.75],
                [cx - 0.07, 0.75],
                [cx - 0.07, 0.45],
            ]
        ),
    )
    c.ellipse(layer, (cx + 0.06, 0.37), (0.035, 0.03), 0)  # aortic knob
    return c.blur(layer, 0.01)


def trachea(c: Canvas) -> np.ndarray:
    """Trachea and main bronchi."""
    cx = 0.5
    layer = c.layer()
    c.line(layer, np.array([[cx, -0.1], [cx, 0.3], [cx + 0.005, 0.42]]), 0.028)
    c.line(layer, np.array([[cx + 0.005, 0.42], [cx - 0.05, 0.5]]), 0.016)
    c.line(layer, np.array([[cx + 0.005, 0.42], [cx + 0.06, 0.49]]), 0.016)
    return c.blur(layer, 0.004)


def skeleton(c: Canvas, s: Study, rng: np.random.Generator) -> np.ndarray:
    """Ribs, clavicles and spine, then the shoulder girdle (humeral heads, scapulae)."""
    a = s.anatomy
    cx, b = 0.5, a.body
    bone = c.layer()
    _ribs(c, a, bone, rng)
    _spine(c, bone)
    bone = c.blur(bone, 0.003)
    girdle = c.layer()
    for side in (-1, 1):
        shoulder = (cx + side * 0.47 * b, 0.15)
        c.ellipse(girdle, shoulder, (0.07, 0.075), 0, 0.6)  # humeral head
        # Scapulae: over the lateral lungs on AP films, rotated clear of them on PA films.
        off = 0.0 if s.ap else 0.09
        c.poly(
            girdle,
            np.array(
                [[cx + side * (0.27 + off), 0.2], [cx + side * (0.44 + off), 0.15], [cx + side * (0.37 + off), 0.55]]
            ),
            0.25,
        )
    bone += c.blur(girdle, 0.008)
    return bone


def gastric_bubble(c: Canvas, a: Anatomy) -> np.ndarray:
    """Air in the stomach under the left hemidiaphragm."""
    gas = c.layer()
    c.ellipse(gas, (0.5 + 0.17 * a.body, a.dome_l + 0.1), (0.06, 0.035), 0)
    return c.blur(gas, 0.01)
