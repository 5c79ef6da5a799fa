"""Phantom frontal chest radiographs in CheXpert's exact on-disk layout (``radflow synth chest``).

Each image is drawn as an attenuation map — body soft tissue, two air-filled lung fields with
vessel markings, heart, mediastinum and trachea, spine, ribs, clavicles, scapulae, diaphragm domes
and a gastric bubble — then posed (small rotation, scale, shift), windowed with a random gamma,
edge-enhanced as processed radiographs are, and given quantum noise. Five findings are drawn with
a severity that runs down to barely visible: Cardiomegaly (cardiothoracic ratio > 0.5), Pleural
Effusion (basal meniscus, blunted costophrenic angle), Pneumothorax (collapsed lung edge, no
markings outside it), Lung Lesion (round nodule or mass) and Consolidation (patchy opacity with
air bronchograms). Support devices (tubes, lines, ECG leads) are drawn too.

AP films magnify the heart (~8 %) and are taken more often of sicker patients, as in real
portable films, so projection is a confounder a model must see past. Patients have 1-4 studies
whose findings persist or evolve and whose anatomy is the same, so splits must be by patient.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from radflow.data.labels import CHEXPERT_LABELS
from radflow.data.synth.common import check_common, draw_marker, image_rng, run_jobs, to_uint8, write_png
from radflow.errors import ConfigError

__all__ = ["CHEXPERT_COLUMNS", "DRAWN_FINDINGS", "FAKE_PHI_MARKERS", "chest_shape", "synth_chest"]

CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
"""The columns of CheXpert's train.csv / valid.csv, in order."""

DRAWN_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation")
"""Findings the phantom draws into the pixels; other label columns only follow them as CheXpert's labeller would."""

FAKE_PHI_MARKERS: tuple[str, ...] = ("PHANTOM^RADFLOW", "RADFLOW PHANTOM HOSPITAL", "19000101")
"""Fake identifying values written into every phantom DICOM (PatientName contains the first,
InstitutionName is the second, PatientBirthDate the third). Nothing de-identified may contain them."""

# Prevalences, approximately CheXpert's training-set rates among frontal films (Irvin et al. 2019):
# Cardiomegaly ~12 %, Pleural Effusion ~38 %, Pneumothorax ~9 %, Lung Lesion ~4 %, Consolidation ~7 %,
# Support Devices ~52 %. Effusion is lowered and Lesion/Consolidation raised so that every drawn label
# sits at 10-25 % — enough positives to learn from 2,000 images — and No Finding stays common.
_P_CARDIOMEGALY = 0.12  # per patient, +0.3 %/year above 60
_P_EFFUSION = 0.15  # per study; +0.30 with cardiomegaly (heart failure), 0.6 if the last study had one
_P_PNEUMOTHORAX = 0.1  # per study; 0.5 if the last study had one (then often with a chest tube)
_P_LESION = 0.13  # per patient; a nodule persists and grows slowly across studies
_P_CONSOLIDATION = 0.10  # per study; +0.06 with effusion, 0.5 if the last study had one
_STUDIES_PER_PATIENT = ((1, 2, 3, 4), (0.45, 0.25, 0.18, 0.12))
_SUBTLE = 0.3  # severity below which the report often hedges ("possible", "cannot exclude") -> -1.0
_AP_MAGNIFICATION = 1.08  # the heart is further from the detector on AP films
_ASPECT = 1.2  # height / width, as CheXpert-small's portrait images; ingest pads to square
_TRANSFER_SYNTAXES = ((ExplicitVRLittleEndian, 0.7), (RLELossless, 0.15), (JPEG2000Lossless, 0.15))


def chest_shape(size: int) -> tuple[int, int]:
    """(height, width) of a phantom chest image of ``size``: width ``size``, height ``round(1.2 * size)``."""
    return round(size * _ASPECT), size


# ------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Anatomy:
    """A patient's body: the same in every study of that patient."""

    body: float  # overall scale (sex, build)
    apex: float  # lung apex height
    dome_r: float  # right hemidiaphragm dome height (right is higher)
    dome_l: float
    rib_gap: float
    heart_tilt: float  # degrees
    heart_y: float
    lesion_xy: tuple[float, float]  # where a lesion sits if the patient has one: (side, lung fraction) pair
    consolidation_zone: tuple[float, float, float]  # side, height fraction, lateral fraction


@dataclass
class _Study:
    index: int  # position in generation order: seeds this image's drawing
    seed: int
    patient_no: int
    study_no: int
    sex: str
    age: int
    ap: bool
    anatomy: _Anatomy
    ctr: float  # true cardiothoracic ratio
    effusion: tuple[float, float] = (0.0, 0.0)  # fluid height (fraction of lung) right, left
    pneumothorax: tuple[int, float] = (0, 0.0)  # side (-1 right, +1 left, 0 none), severity
    lesion: float = 0.0  # severity (size/contrast), 0 = none
    consolidation: float = 0.0
    devices: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    dicom: bool = False
    out_file: str = ""
    size: int = 256


def _severity(rng: np.random.Generator) -> float:
    # Skewed toward subtle: about a third of findings are hard to see.
    return float(np.clip(rng.beta(1.3, 1.6), 0.04, 1.0))


def _finding_label(rng: np.random.Generator, severity: float) -> str:
    if severity <= 0:
        # Not present: usually not mentioned (blank), sometimes explicitly negative, rarely hedged.
        u = rng.random()
        return "" if u < 0.68 else "0.0" if u < 0.985 else "-1.0"
    if severity < _SUBTLE:
        return "-1.0" if rng.random() < 0.55 else "1.0"
    return "-1.0" if rng.random() < 0.04 else "1.0"


def _anatomy(rng: np.random.Generator, sex: str, age: int) -> _Anatomy:
    body = (1.0 if sex == "Male" else 0.93) * (1.0 + 0.001 * (age - 50)) * float(rng.normal(1.0, 0.03))
    side = float(rng.choice([-1.0, 1.0]))
    return _Anatomy(
        body=float(np.clip(body, 0.84, 1.1)),
        apex=float(rng.normal(0.21, 0.012)),
        dome_r=float(rng.normal(0.76, 0.02)),
        dome_l=float(rng.normal(0.79, 0.02)),
        rib_gap=float(rng.normal(0.064, 0.003)),
        heart_tilt=float(rng.normal(-25.0, 5.0)),
        heart_y=float(rng.normal(0.69, 0.012)),
        lesion_xy=(side, float(rng.uniform(0.15, 0.85))),
        consolidation_zone=(
            float(rng.choice([-1.0, 1.0])),
            float(rng.uniform(0.35, 0.9)),
            float(rng.uniform(0.3, 0.8)),
        ),
    )


def _plan(n: int, seed: int, size: int, dicom_fraction: float, valid_fraction: float) -> list[_Study]:
    rng = image_rng(seed, 0, 0)
    studies: list[_Study] = []
    patient = 0
    while len(studies) < n:
        patient += 1
        sex = "Male" if rng.random() < 0.59 else "Female"
        age = int(np.clip(round(rng.normal(61, 17)), 18, 90))
        anatomy = _anatomy(image_rng(seed, 1, patient), sex, age)
        count = min(int(rng.choice(_STUDIES_PER_PATIENT[0], p=_STUDIES_PER_PATIENT[1])), n - len(studies))
        cardiomegaly = rng.random() < _P_CARDIOMEGALY + 0.003 * max(0, age - 60)
        ctr = float(rng.uniform(0.505, 0.64) if cardiomegaly else np.clip(rng.normal(0.44, 0.03), 0.35, 0.495))
        lesion = _severity(rng) if rng.random() < _P_LESION else 0.0
        prev: _Study | None = None
        for study_no in range(1, count + 1):
            effusion = (0.0, 0.0)
            p_eff = 0.6 if prev and max(prev.effusion) > 0 else _P_EFFUSION + (0.3 if cardiomegaly else 0.0)
            if rng.random() < p_eff:
                s = _severity(rng)
                u = rng.random()
                second = s * float(rng.uniform(0.4, 1.0))
                effusion = (s, second) if u < 0.35 else (s, 0.0) if u < 0.75 else (0.0, s)
            ptx: tuple[int, float] = (0, 0.0)
            p_ptx = 0.5 if prev and prev.pneumothorax[0] else _P_PNEUMOTHORAX
            if rng.random() < p_ptx:
                if prev and prev.pneumothorax[0]:  # resolving, usually after a chest tube
                    ptx = (prev.pneumothorax[0], prev.pneumothorax[1] * float(rng.uniform(0.3, 0.9)))
                else:
                    ptx = (int(rng.choice([-1, 1])), _severity(rng))
            p_cons = 0.5 if prev and prev.consolidation else _P_CONSOLIDATION + (0.06 if max(effusion) else 0.0)
            consolidation = _severity(rng) if rng.random() < p_cons else 0.0
            sick = max(effusion) > 0 or ptx[0] != 0 or consolidation > 0
            ap = rng.random() < (0.8 if sick else 0.5)
            devices: list[str] = []
            if rng.random() < (0.6 if ap else 0.1):
                kinds = ["ett", "ng", "line", "ecg"]
                picks = rng.choice(len(kinds), size=int(rng.integers(1, 4)), replace=False)
                devices = [kinds[i] for i in sorted(picks)]
            if ptx[0] and prev and prev.pneumothorax[0] and rng.random() < 0.7:
                devices.append("chest_tube")
            study = _Study(
                index=len(studies),
                seed=seed,
                patient_no=patient,
                study_no=study_no,
                sex=sex,
                age=age,
                ap=bool(ap),
                anatomy=anatomy,
                ctr=float(np.clip(ctr + rng.normal(0, 0.008), 0.33, 0.68)),
                effusion=effusion,
                pneumothorax=ptx,
                lesion=min(1.0, lesion * (1.06 ** (study_no - 1))),
                consolidation=consolidation,
                devices=tuple(devices),
                size=size,
            )
            study.labels = _labels(rng, study)
            studies.append(study)
            prev = study
    _assign_splits(rng, studies, patient, valid_fraction)
    n_dicom = round(dicom_fraction * len(studies))
    for i in rng.permutation(len(studies))[:n_dicom]:
        studies[int(i)].dicom = True
    return studies


def _labels(rng: np.random.Generator, s: _Study) -> dict[str, str]:
    cardio = (s.ctr - 0.5) / 0.14 if s.ctr > 0.5 else 0.0
    labels = dict.fromkeys(CHEXPERT_LABELS, "")
    labels["Cardiomegaly"] = _finding_label(rng, cardio)
    labels["Pleural Effusion"] = _finding_label(rng, max(s.effusion))
    labels["Pneumothorax"] = _finding_label(rng, s.pneumothorax[1])
    labels["Lung Lesion"] = _finding_label(rng, s.lesion)
    labels["Consolidation"] = _finding_label(rng, s.consolidation)
    # Observations the labeller derives from the drawn ones, at roughly CheXpert's co-mention rates.
    if labels["Cardiomegaly"] in ("1.0", "-1.0") and rng.random() < 0.4:
        labels["Enlarged Cardiomediastinum"] = "1.0" if rng.random() < 0.6 else "-1.0"
    opacity = {labels["Lung Lesion"], labels["Consolidation"]}
    if "1.0" in opacity:
        labels["Lung Opacity"] = "1.0"
    elif "-1.0" in opacity:
        labels["Lung Opacity"] = "-1.0"
    if labels["Consolidation"] in ("1.0", "-1.0") and rng.random() < 0.6:
        labels["Pneumonia"] = "-1.0" if rng.random() < 0.65 else "1.0"
    if labels["Pleural Effusion"] == "1.0" and rng.random() < 0.3:
        labels["Atelectasis"] = "1.0" if rng.random() < 0.4 else "-1.0"  # "adjacent atelectasis"
    if labels["Pleural Effusion"] == "1.0" and labels["Cardiomegaly"] == "1.0" and rng.random() < 0.4:
        labels["Edema"] = "1.0" if rng.random() < 0.5 else "-1.0"
    labels["Support Devices"] = "1.0" if s.devices else ("0.0" if rng.random() < 0.1 else "")
    pathology = [k for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices")]
    # CheXpert's rule: No Finding is positive when no pathology is positive or uncertain.
    labels["No Finding"] = "" if any(labels[k] in ("1.0", "-1.0") for k in pathology) else "1.0"
    return labels


def _assign_splits(rng: np.random.Generator, studies: list[_Study], patients: int, valid_fraction: float) -> None:
    n_valid = round(valid_fraction * patients)
    if valid_fraction > 0 and patients >= 2:
        n_valid = min(max(1, n_valid), patients - 1)
    valid = {int(p) + 1 for p in rng.permutation(patients)[:n_valid]}
    # CheXpert numbers validation patients after the training ones (patient64541 onwards).
    order = sorted(range(1, patients + 1), key=lambda p: (p in valid, p))
    number = {p: i + 1 for i, p in enumerate(order)}
    for s in studies:
        s.split = "valid" if s.patient_no in valid else "train"
        s.patient_no = number[s.patient_no]


# ------------------------------------------------------------------------------------------- draw


class _Canvas:
    """Drawing in body units (1.0 = image width) on float32 layers, with sub-pixel precision."""

    SHIFT = 4

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.scale = float(width)

    def layer(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.float32)

    def pts(self, xy: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(xy, np.float64) * self.scale * (1 << self.SHIFT)).astype(np.int32).reshape(-1, 1, 2)

    def px(self, length: float) -> int:
        return max(1, round(length * self.scale))

    def poly(self, layer: np.ndarray, xy: np.ndarray, value: float = 1.0) -> None:
        cv2.fillPoly(layer, [self.pts(xy)], value, cv2.LINE_AA, self.SHIFT)

    def line(self, layer: np.ndarray, xy: np.ndarray, thick: float, value: float = 1.0) -> None:
        cv2.polylines(layer, [self.pts(xy)], False, value, self.px(thick), cv2.LINE_AA, self.SHIFT)

    def ellipse(
        self, layer: np.ndarray, c: tuple[float, float], axes: tuple[float, float], angle: float, value: float = 1.0
    ) -> None:
        k = self.scale * (1 << self.SHIFT)
        centre = (round(c[0] * k), round(c[1] * k))
        size = (max(1, round(axes[0] * k)), max(1, round(axes[1] * k)))
        cv2.ellipse(layer, centre, size, angle, 0, 360, value, -1, cv2.LINE_AA, self.SHIFT)

    def blur(self, layer: np.ndarray, sigma: float) -> np.ndarray:
        s = sigma * self.scale
        return layer if s < 0.3 else cv2.GaussianBlur(layer, (0, 0), s)


def _lung(a: _Anatomy, side: int) -> np.ndarray:
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


def _vessels(c: _Canvas, rng: np.random.Generator, layer: np.ndarray, outline: np.ndarray, hilum: np.ndarray) -> None:
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


def _ribs(c: _Canvas, a: _Anatomy, layer: np.ndarray, rng: np.random.Generator) -> None:
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


def _spine(c: _Canvas, layer: np.ndarray) -> None:
    y = 0.02
    while y < 1.2:
        w = 0.03 + 0.012 * min(1.0, y)
        h = 0.038 + 0.01 * min(1.0, y)
        c.poly(layer, np.array([[0.5 - w, y], [0.5 + w, y], [0.5 + w, y + h], [0.5 - w, y + h]]), 0.28)
        for side in (-1, 1):
            c.ellipse(layer, (0.5 + side * w * 0.6, y + h * 0.4), (0.006, 0.01), 0, 0.35)
        y += h + 0.007


def _devices(c: _Canvas, s: _Study, rng: np.random.Generator, layer: np.ndarray) -> None:
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


def _render(s: _Study) -> np.ndarray:
    """Draw one study as display grey levels in [0, 1] (0 = black), float32."""
    rng = image_rng(s.seed, 2, s.index)
    a = s.anatomy
    h, w = chest_shape(s.size)
    c = _Canvas(h, w)
    cx, b = 0.5, a.body
    # Soft tissue: neck, shoulders and chest wall, thicker in the middle.
    body = c.layer()
    top = 0.04
    half = np.array(
        [[0.09, -0.1], [0.1, top + 0.04], [0.46 * b, 0.1], [0.52 * b, 0.2], [0.47 * b, 0.6], [0.47 * b, 1.3]]
    )
    shift = np.array([cx, 0.0])
    c.poly(body, np.concatenate([half + shift, (half * np.array([-1.0, 1.0]) + shift)[::-1]]))
    body = c.blur(body, 0.02)
    xs = (np.arange(w, dtype=np.float32) / w - cx) / (0.6 * b)
    body *= (0.55 + 0.45 * np.sqrt(np.clip(1 - xs**2, 0, 1)))[None, :]

    outlines = {side: _lung(a, side) for side in (-1, 1)}
    hila = {side: np.array([cx + side * 0.1, 0.5]) for side in (-1, 1)}
    lungs = c.layer()
    for outline in outlines.values():
        c.poly(lungs, outline)
    lungs = c.blur(lungs, 0.008)

    # Pneumothorax: the lung collapses toward its lower hilum; outside it, air without markings.
    aerated = lungs
    ptx_side, ptx = s.pneumothorax
    ptx_space: np.ndarray | None = None
    collapsed = outlines[-1]
    if ptx_side:
        anchor = np.array([cx + ptx_side * 0.1, 0.68])
        shrink = 1.0 - (0.04 + 0.3 * ptx)
        collapsed = anchor + (outlines[ptx_side] - anchor) * np.array([shrink, 1.0 - (1.0 - shrink) * 0.8])
        mask = c.layer()
        for side, o in outlines.items():
            c.poly(mask, collapsed if side == ptx_side else o)
        aerated = c.blur(mask, 0.004) * lungs
        ptx_space = np.clip(lungs - aerated, 0, 1)
    markings = c.layer()
    for side in (-1, 1):
        _vessels(c, rng, markings, outlines[side], hila[side])
    markings = c.blur(markings, 0.003) * aerated
    # Parenchymal texture: smooth low-frequency noise, so lungs are not flat.
    texture = cv2.resize(
        rng.normal(0, 1, (h // 12 + 2, w // 12 + 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )

    heart = c.layer()
    ctr = s.ctr * (_AP_MAGNIFICATION if s.ap else 1.0)
    span = ctr * 2 * 0.375 * b  # heart width from cardiothoracic ratio and inner thorax width
    left, right = span * 0.64, span * 0.36
    hcx = cx + (left - right) / 2
    theta = math.radians(a.heart_tilt)
    bh = 0.14 * b * (0.85 + 0.3 * s.ctr)
    ah = math.sqrt(max(((span / 2) ** 2 - (bh * math.sin(theta)) ** 2) / math.cos(theta) ** 2, 1e-4))
    c.ellipse(heart, (hcx, a.heart_y), (ah, bh), a.heart_tilt)
    c.ellipse(heart, (cx - right * 0.5, a.heart_y - 0.02), (right * 0.55, bh * 0.8), 0)  # right atrium border
    mediastinum = c.layer()
    c.poly(
        mediastinum,
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
    c.ellipse(mediastinum, (cx + 0.06, 0.37), (0.035, 0.03), 0)  # aortic knob
    heart = c.blur(heart, 0.006)
    mediastinum = c.blur(mediastinum, 0.01)
    trachea = c.layer()
    c.line(trachea, np.array([[cx, -0.1], [cx, 0.3], [cx + 0.005, 0.42]]), 0.028)
    c.line(trachea, np.array([[cx + 0.005, 0.42], [cx - 0.05, 0.5]]), 0.016)
    c.line(trachea, np.array([[cx + 0.005, 0.42], [cx + 0.06, 0.49]]), 0.016)
    trachea = c.blur(trachea, 0.004)

    # Findings that displace air: fluid, consolidation, nodule.
    fill = c.layer()
    yy = (np.arange(h, dtype=np.float32) / w)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w)[None, :]
    for side, sev in zip((-1, 1), s.effusion, strict=True):
        if sev <= 0:
            continue
        o = outlines[side]
        cp_y = float(o[15, 1])
        lateral = np.clip((side * (xx - cx) - 0.07) / (0.375 * b - 0.07), 0, 1)
        height = 0.03 + 0.3 * sev  # from a blunted angle to a third of the lung
        level = cp_y - height * (0.3 + 0.7 * lateral**1.5)  # meniscus: higher against the chest wall
        half = (xx - cx) * side > 0
        fill += half * (0.5 + 0.5 * np.tanh((yy - level) / 0.02)) * (0.7 + 0.3 * sev)  # soft upper edge
    if s.consolidation > 0:
        side_f, fy, fx = a.consolidation_zone
        o = outlines[int(side_f)]
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
    if s.lesion > 0:
        side_l, frac = a.lesion_xy
        o = outlines[int(side_l)]
        p = hila[int(side_l)] + (o[int(frac * 15)] - hila[int(side_l)]) * 0.6
        r = 0.008 + 0.042 * s.lesion
        nod = c.layer()
        c.ellipse(nod, (float(p[0]), float(p[1])), (r, r * float(rng.uniform(0.85, 1.0))), float(rng.uniform(0, 180)))
        if s.lesion > 0.5:  # masses are lobulated
            q = p + rng.normal(0, r * 0.5, 2)
            c.ellipse(nod, (float(q[0]), float(q[1])), (r * 0.6, r * 0.55), 0)
        fill += c.blur(nod, r * 0.25) * (0.45 + 0.55 * s.lesion)
    fill = np.clip(fill, 0, 1)

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
    dev = c.layer()
    _devices(c, s, rng, dev)
    if ptx_space is not None:  # the visceral pleural line at the collapsed lung's edge
        pleura_line = c.layer()
        c.line(pleura_line, collapsed[:18], 0.004, 1.0)
        dev += c.blur(pleura_line, 0.0015) * lungs * (0.1 + 0.12 * ptx)
    air = lungs * (1 - 0.85 * heart) * (1 - mediastinum) * (1 - fill)
    if ptx_space is not None:
        air = air + 0.25 * ptx_space * (1 - fill)  # no lung tissue in the pleural space: darker still
    gas = c.layer()
    c.ellipse(gas, (cx + 0.17 * b, a.dome_l + 0.1), (0.06, 0.035), 0)
    air += c.blur(gas, 0.01) * 0.5 + trachea * 0.25 * (1 - lungs)
    att = 0.5 * body - 0.3 * air + 0.05 * heart + 0.04 * mediastinum + 0.05 * fill * lungs
    # Bone shows less through the dense heart and mediastinum, as on processed films.
    dense = np.maximum(heart, mediastinum)
    att += (0.1 * markings + 0.012 * texture) * lungs + 0.3 * bone * body * (1 - 0.6 * dense) + 0.18 * dev

    # Pose: small rotation, magnification and shift, as a technologist positions a patient.
    m = np.asarray(cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.normal(0, 2.0)), float(rng.uniform(0.95, 1.05))))
    m[:, 2] = m[:, 2] + rng.normal(0, 0.015, 2) * w
    att = cv2.warpAffine(att, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)

    # Exposure and processing: quantum noise, window/gamma, unsharp-mask edge enhancement.
    att = att + rng.standard_normal(att.shape, dtype=np.float32) * (0.012 * np.sqrt(np.abs(att) + 0.05))
    lo, hi = float(rng.uniform(-0.03, 0.03)), float(rng.uniform(0.74, 0.86))
    img = np.power(np.clip((att - lo) / (hi - lo), 0, 1), float(rng.uniform(0.85, 1.2)))
    img = img + float(rng.uniform(0.2, 0.5)) * (img - c.blur(img, 0.03))
    img = cv2.GaussianBlur(img, (0, 0), max(0.4, 0.0025 * w))
    img = np.clip(img, 0, 1).astype(np.float32)
    # Side marker on the patient's left (image right), as technologists place it.
    draw_marker(img, "L", 0.87, 0.07)
    return img


# -------------------------------------------------------------------------------------- write out


def _dicom_attributes(s: _Study) -> dict[str, Any]:
    return {
        "PatientID": f"patient{s.patient_no:05d}",
        "PatientName": f"PHANTOM^RADFLOW^{s.patient_no:05d}",
        "PatientBirthDate": "19000101",
        "InstitutionName": "RADFLOW PHANTOM HOSPITAL",
        "PatientSex": "M" if s.sex == "Male" else "F",
        "PatientAge": f"{s.age:03d}Y",
        "ViewPosition": "AP" if s.ap else "PA",
        "BodyPartExamined": "CHEST",
        "StudyDescription": "CHEST AP PORTABLE" if s.ap else "CHEST PA",
        "StudyID": str(s.study_no),
        "SeriesNumber": "1",
        "InstanceNumber": "1",
    }


def _write_dicom(path: Path, img: np.ndarray, s: _Study, rng: np.random.Generator) -> None:
    from radflow.data.dicom import write_dicom

    bits = int(rng.choice([12, 14, 16]))
    top = 2**bits - 1
    offset = float(rng.uniform(0.01, 0.08)) * top
    span = float(rng.uniform(0.8, 0.9)) * top
    stored = np.round(offset + img.astype(np.float64) * span)
    mono1 = bool(rng.random() < 0.4)
    lo, hi = offset, offset + span  # stored values of black and white
    if mono1:  # MONOCHROME1 stores white as the minimum; the window follows the stored values
        stored = top - stored
        lo, hi = top - hi, top - lo
    slope = float(rng.choice([1.0, 0.5, 2.0]))
    intercept = float(rng.choice([0.0, -1024.0]))
    window = ((lo + hi) / 2 * slope + intercept, (hi - lo) * slope)
    r = rng.random()
    cumulative = 0.0
    syntax = ExplicitVRLittleEndian
    for uid, share in _TRANSFER_SYNTAXES:
        cumulative += share
        if r < cumulative:
            syntax = uid
            break
    attributes = _dicom_attributes(s)
    attributes["Modality"] = "CR" if rng.random() < 0.3 else "DX"
    write_dicom(
        path,
        np.clip(stored, 0, top).astype(np.uint16),
        bits_stored=bits,
        photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
        rescale_slope=slope,
        rescale_intercept=intercept,
        window=(round(window[0], 2), round(window[1], 2)),
        attributes=attributes,
        transfer_syntax=syntax,
        uid_seed=f"radflow-synth-chest:{s.seed}:{s.index}",
    )


def _draw_and_write(job: tuple[_Study, str]) -> None:
    s, out = job
    img = _render(s)
    path = Path(out) / s.out_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if s.dicom:
        _write_dicom(path, img, s, image_rng(s.seed, 3, s.index))
    else:
        write_png(path, to_uint8(img))


def synth_chest(
    out: Path,
    n: int,
    seed: int,
    size: int = 256,
    dicom_fraction: float = 0.0,
    valid_fraction: float = 0.1,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write ``n`` phantom frontal chest radiographs under ``out`` in CheXpert's layout; returns a summary.

    ``out/train.csv`` and ``out/valid.csv`` have CheXpert's columns; Path is
    ``<out.name>/{train|valid}/patientNNNNN/studyN/view1_frontal.png`` (``.dcm`` for the
    ``dicom_fraction`` share written as DICOM). ``valid_fraction`` of the patients (never their
    studies piecemeal) go to valid.csv. The same ``seed`` gives the same bytes for any ``workers``.
    """
    check_common(n, seed, size, workers)
    if not isinstance(dicom_fraction, int | float) or not 0.0 <= dicom_fraction <= 1.0:
        raise ConfigError(f"--dicom-fraction must be between 0 and 1, got {dicom_fraction!r}")
    if not isinstance(valid_fraction, int | float) or not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"--valid-fraction must be at least 0 and below 1, got {valid_fraction!r}")
    start = time.perf_counter()
    out = Path(out)
    studies = _plan(n, seed, size, float(dicom_fraction), float(valid_fraction))
    for s in studies:
        ext = "dcm" if s.dicom else "png"
        s.out_file = f"{s.split}/patient{s.patient_no:05d}/study{s.study_no}/view1_frontal.{ext}"
    out.mkdir(parents=True, exist_ok=True)
    used = run_jobs(_draw_and_write, [(s, str(out)) for s in studies], workers)
    for split in ("train", "valid"):
        rows = sorted((s for s in studies if s.split == split), key=lambda s: (s.patient_no, s.study_no))
        with (out / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(CHEXPERT_COLUMNS)
            for s in rows:
                meta = [f"{out.name}/{s.out_file}", s.sex, s.age, "Frontal", "AP" if s.ap else "PA"]
                writer.writerow(meta + [s.labels[k] for k in CHEXPERT_LABELS])
    height, width = chest_shape(size)
    prevalence = {
        k: round(sum(s.labels[k] == "1.0" for s in studies) / len(studies), 4)
        for k in (*DRAWN_FINDINGS, "No Finding", "Support Devices")
    }
    return {
        "out": str(out),
        "kind": "chest",
        "images": len(studies),
        "patients": len({(s.split, s.patient_no) for s in studies}),
        "train_images": sum(s.split == "train" for s in studies),
        "valid_images": sum(s.split == "valid" for s in studies),
        "valid_patients": len({s.patient_no for s in studies if s.split == "valid"}),
        "dicom_images": sum(s.dicom for s in studies),
        "width": width,
        "height": height,
        "seed": seed,
        "workers": used,
        "prevalence": prevalence,
        "uncertain": {k: sum(s.labels[k] == "-1.0" for s in studies) for k in DRAWN_FINDINGS},
        "seconds": round(time.perf_counter() - start, 2),
    }
