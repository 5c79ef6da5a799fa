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

This module writes the CheXpert layout (CSV files, PNG or DICOM); who is imaged is planned in
:mod:`~radflow.data.synth.chest_plan`, the pixels are drawn by :mod:`~radflow.data.synth.chest_render`
from :mod:`~radflow.data.synth.chest_anatomy` and :mod:`~radflow.data.synth.chest_findings`.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from radflow.data.labels import CHEXPERT_LABELS
from radflow.data.synth.chest_plan import Study, chest_shape, plan_studies
from radflow.data.synth.chest_render import MASK_STRUCTURES, render_chest, render_chest_with_masks
from radflow.data.synth.common import check_common, image_rng, run_jobs, to_uint8, write_png
from radflow.data.synth.truth import write_coco_boxes, write_masks, write_truth_tables
from radflow.errors import ConfigError

__all__ = ["CHEXPERT_COLUMNS", "DRAWN_FINDINGS", "FAKE_PHI_MARKERS", "chest_shape", "synth_chest"]

CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
"""The columns of CheXpert's train.csv / valid.csv, in order."""

DRAWN_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation")
"""Findings the phantom draws into the pixels; other label columns only follow them as CheXpert's labeller would."""

FAKE_PHI_MARKERS: tuple[str, ...] = ("PHANTOM^RADFLOW", "RADFLOW PHANTOM HOSPITAL", "19000101")
"""Fake identifying values written into every phantom DICOM (PatientName contains the first,
InstitutionName is the second, PatientBirthDate the third). Nothing de-identified may contain them."""

_TRANSFER_SYNTAXES = ((ExplicitVRLittleEndian, 0.7), (RLELossless, 0.15), (JPEG2000Lossless, 0.15))


# -------------------------------------------------------------------------------------- write out


DETECTOR_MM = 430.0
"""The detector side a chest phantom's long side spans, for the ImagerPixelSpacing of its DICOM files."""


def _dicom_attributes(s: Study) -> dict[str, Any]:
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


def _write_dicom(path: Path, img: np.ndarray, s: Study, rng: np.random.Generator) -> None:
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
    # the phantom's long side spans a 43 cm (17-inch) detector of square pixels: distances come out in real mm
    pixel_mm = round(DETECTOR_MM / max(img.shape), 6)
    attributes["ImagerPixelSpacing"] = [pixel_mm, pixel_mm]
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


def _draw_and_write(job: tuple[Study, str, bool]) -> None:
    s, out, with_masks = job
    if with_masks:
        img, masks = render_chest_with_masks(s)
        write_masks(Path(out), s.out_file, MASK_STRUCTURES, masks)
    else:
        img = render_chest(s)
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
    masks: bool = False,
    boxes: bool = False,
) -> dict[str, Any]:
    """Write ``n`` phantom frontal chest radiographs under ``out`` in CheXpert's layout; returns a summary.

    ``out/train.csv`` and ``out/valid.csv`` have CheXpert's columns; Path is
    ``<out.name>/{train|valid}/patientNNNNN/studyN/view1_frontal.png`` (``.dcm`` for the
    ``dicom_fraction`` share written as DICOM). ``valid_fraction`` of the patients (never their
    studies piecemeal) go to valid.csv. The same ``seed`` gives the same bytes for any ``workers``.
    ``masks`` adds the exact ground-truth masks of the lungs, heart, effusion, pneumothorax and lesion
    (:mod:`radflow.data.synth.truth`); the images are the same with or without them. ``boxes`` adds the
    findings' boxes (the bounding boxes of their masks' regions) as COCO ``annotations.json``, and the masks
    they come from.
    """
    check_common(n, seed, size, workers)
    if not isinstance(dicom_fraction, int | float) or not 0.0 <= dicom_fraction <= 1.0:
        raise ConfigError(f"--dicom-fraction must be between 0 and 1, got {dicom_fraction!r}")
    if not isinstance(valid_fraction, int | float) or not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"--valid-fraction must be at least 0 and below 1, got {valid_fraction!r}")
    start = time.perf_counter()
    out = Path(out)
    studies = plan_studies(n, seed, size, float(dicom_fraction), float(valid_fraction))
    for s in studies:
        ext = "dcm" if s.dicom else "png"
        s.out_file = f"{s.split}/patient{s.patient_no:05d}/study{s.study_no}/view1_frontal.{ext}"
    out.mkdir(parents=True, exist_ok=True)
    used = run_jobs(_draw_and_write, [(s, str(out), masks or boxes) for s in studies], workers)
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
    truth: dict[str, Any] = {}
    if masks or boxes:
        images = [(s.out_file, f"patient{s.patient_no:05d}", f"study{s.study_no}") for s in studies]
        shown = write_truth_tables(out, MASK_STRUCTURES, images)
        truth = {"masks": {"structures": list(MASK_STRUCTURES), "images_showing": shown}}
    if boxes:
        counts = write_coco_boxes(out, MASK_STRUCTURES, [s.out_file for s in studies])
        truth["boxes"] = {"file": "annotations.json", "counts": counts}
    return {
        **truth,
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
