"""Who the phantom chest films are of: patients, their studies, the findings each study has, and its CheXpert labels.

Patients have 1-4 studies whose findings persist or evolve and whose anatomy is the same, so
splits must be by patient. AP films are taken more often of sicker patients, as in real portable
films. Everything here is drawn from the plan's own generators; the pixels come later
(:mod:`radflow.data.synth.chest_render`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from radflow.data.labels import CHEXPERT_LABELS
from radflow.data.synth.common import image_rng

__all__ = ["Anatomy", "Study", "chest_shape", "plan_studies"]

_ASPECT = 1.2  # height / width, as CheXpert-small's portrait images; ingest pads to square

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


def chest_shape(size: int) -> tuple[int, int]:
    """(height, width) of a phantom chest image of ``size``: width ``size``, height ``round(1.2 * size)``."""
    return round(size * _ASPECT), size


@dataclass(frozen=True)
class Anatomy:
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
class Study:
    index: int  # position in generation order: seeds this image's drawing
    seed: int
    patient_no: int
    study_no: int
    sex: str
    age: int
    ap: bool
    anatomy: Anatomy
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


def _anatomy(rng: np.random.Generator, sex: str, age: int) -> Anatomy:
    body = (1.0 if sex == "Male" else 0.93) * (1.0 + 0.001 * (age - 50)) * float(rng.normal(1.0, 0.03))
    side = float(rng.choice([-1.0, 1.0]))
    return Anatomy(
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


def plan_studies(n: int, seed: int, size: int, dicom_fraction: float, valid_fraction: float) -> list[Study]:
    rng = image_rng(seed, 0, 0)
    studies: list[Study] = []
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
        prev: Study | None = None
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
            study = Study(
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


def _labels(rng: np.random.Generator, s: Study) -> dict[str, str]:
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


def _assign_splits(rng: np.random.Generator, studies: list[Study], patients: int, valid_fraction: float) -> None:
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
