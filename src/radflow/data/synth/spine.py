"""Phantom sagittal lumbar spine MR slices with Schmorl's nodes at known places (``radflow synth spine``).

The MLflow seed's radiology workflow detects vertebrae on sagittal MR and then looks for Schmorl's
nodes inside each one. Each phantom is one T2-weighted-like midline sagittal slice, anterior to the
left: the body's soft tissue, six vertebral bodies (T12 to L5) and the top of the sacrum on a lordotic
curve, bright (hydrated) or dark (degenerated) discs between them, the CSF-filled canal behind with
the cord ending at the conus, and the posterior elements. A Schmorl's node is a herniation of disc
into a vertebral body through an endplate: a rounded notch of disc signal in the superior or inferior
endplate with a dark sclerotic rim, its depth running down to barely visible. The slice is posed
(rotation, scale, shift), given a smooth coil-sensitivity field and Rician noise, and written as an
MR Image Storage DICOM file with the fake identifying values of every phantom.

Ground truth comes from the drawing itself, after the pose:

* ``annotations.json``: COCO boxes of category ``Vertebra``, one per vertebral body (the bounding box
  of its drawn body, notches included), each also carrying its ``level`` and ``schmorl`` (0/1), so
  ``radflow ingest OUT --format coco-boxes`` reads the folder as a detection source (patients from
  the DICOM PatientID);
* ``vertebrae.csv``: ``path, patient_id, study_id, level, x, y, width, height, schmorl, endplate,
  depth_mm`` — the per-vertebra truth a second step (crop, then classify) is trained and judged on;
* ``patients.csv``: ``path, patient_id, study_id``, as the other phantoms write it.

Patients have 1-2 studies whose nodes persist (the same anatomy imaged again), so splits must be by
patient. The same ``seed`` gives the same bytes for any number of workers.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from radflow.data.synth.common import check_common, image_rng, run_jobs
from radflow.data.synth.truth import COCO_FILE, mask_boxes

__all__ = ["SPINE_COLUMNS", "SPINE_LEVELS", "VERTEBRA_LABEL", "synth_spine"]

SPINE_LEVELS: tuple[str, ...] = ("T12", "L1", "L2", "L3", "L4", "L5")
"""The vertebral bodies a phantom shows whole, top to bottom (the sacrum below is not labelled)."""
VERTEBRA_LABEL = "Vertebra"
"""The detection category of every vertebral body."""
SPINE_COLUMNS: tuple[str, ...] = (
    "path", "patient_id", "study_id", "level", "x", "y", "width", "height", "schmorl", "endplate", "depth_mm",
)  # fmt: skip
"""Columns of ``vertebrae.csv`` (boxes in the image's pixels: x, y of the top-left edge, width, height)."""

FIELD_OF_VIEW_MM = 300.0
"""The square field of view a phantom's side spans, for its PixelSpacing."""
_NODE_RATE = 0.22  # share of vertebral bodies with a node, before the patient's own tendency
_BITS = 12


@dataclass
class _Vertebra:
    level: str
    centre: tuple[float, float]  # canonical coordinates, fractions of the side (x, y)
    angle: float  # radians, the body's tilt along the curve
    height: float
    depth: float
    node: str | None = None  # "superior" | "inferior"
    node_depth: float = 0.0  # fraction of the body's height
    node_offset: float = 0.0  # along the endplate, -0.3..0.3 of the depth


@dataclass
class _Spine:
    index: int
    seed: int
    size: int
    patient_no: int
    study_no: int
    dicom_path: str = ""
    vertebrae: list[_Vertebra] = field(default_factory=list)
    discs_dark: list[bool] = field(default_factory=list)
    pose: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)  # angle (deg), scale, dx, dy (fractions)
    echo_ms: float = 100.0
    tr_ms: float = 3500.0


def _plan(n: int, seed: int, size: int) -> list[_Spine]:
    """Who is imaged: patients with their anatomy and nodes, then 1-2 studies each (the nodes persist)."""
    rng = np.random.default_rng([seed, 101])
    studies: list[_Spine] = []
    patient = 0
    while len(studies) < n:
        patient += 1
        tendency = float(rng.beta(1.2, 3.0))  # some patients have many nodes, most few
        lordosis = float(rng.uniform(0.02, 0.07))
        height = float(rng.uniform(0.088, 0.102))
        depth = float(rng.uniform(0.15, 0.18))
        disc = float(rng.uniform(0.026, 0.034))
        top = float(rng.uniform(0.07, 0.11))
        base_x = float(rng.uniform(0.40, 0.46))
        vertebrae = []
        y = top
        for k, level in enumerate(SPINE_LEVELS):
            cy = y + height / 2
            phase = (cy - 0.5) * math.pi
            cx = base_x - lordosis * math.cos(phase)  # lumbar lordosis: the middle bodies sit anterior
            angle = lordosis * math.sin(phase) * 4.0
            v = _Vertebra(level, (cx, cy), angle, height * (1.0 + 0.02 * k), depth * (1.0 + 0.015 * k))
            if rng.random() < _NODE_RATE + 0.6 * tendency:
                v.node = "superior" if rng.random() < 0.5 else "inferior"
                v.node_depth = float(rng.uniform(0.07, 0.3))
                v.node_offset = float(rng.uniform(-0.25, 0.25))
            vertebrae.append(v)
            y += height * (1.0 + 0.02 * k) + disc
        dark = [bool(rng.random() < 0.15 + 0.4 * tendency) for _ in range(len(SPINE_LEVELS))]
        for study_no in range(1, 2 + int(rng.random() < 0.35)):
            if len(studies) == n:
                break
            s = _Spine(len(studies), seed, size, patient, study_no, vertebrae=vertebrae, discs_dark=dark)
            s.dicom_path = f"images/patient{patient:05d}/study{study_no}/sag_t2.dcm"
            s.pose = (
                float(rng.uniform(-8, 8)),
                float(rng.uniform(0.92, 1.08)),
                float(rng.uniform(-0.04, 0.04)),
                float(rng.uniform(-0.03, 0.03)),
            )
            s.echo_ms = float(rng.choice([90.0, 100.0, 110.0]))
            s.tr_ms = float(rng.choice([3000.0, 3500.0, 4000.0]))
            studies.append(s)
    return studies


def _body_polygon(v: _Vertebra, side: int) -> np.ndarray:
    """The vertebral body's outline in pixels: a rounded box whose endplates bow in slightly."""
    w, h = v.depth * side, v.height * side
    t = np.linspace(-1, 1, 24)
    top = np.stack([t * w / 2, -h / 2 + 0.04 * h * (1 - t**2)], axis=1)
    right = np.stack([np.full_like(t, w / 2), t * h / 2 * 0.94], axis=1)[1:-1]
    bottom = np.stack([t[::-1] * w / 2, h / 2 - 0.04 * h * (1 - t[::-1] ** 2)], axis=1)
    left = np.stack([np.full_like(t, -w / 2) + 0.03 * w * (1 - t[::-1] ** 2), t[::-1] * h / 2 * 0.94], axis=1)[1:-1]
    pts = np.concatenate([top, right, bottom, left])
    c, s = math.cos(v.angle), math.sin(v.angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return rot + np.array([v.centre[0] * side, v.centre[1] * side])


def _node_centre(v: _Vertebra, side: int) -> tuple[float, float, float]:
    """(x, y, radius) in pixels of the notch a node cuts into its endplate."""
    w, h = v.depth * side, v.height * side
    sign = -1.0 if v.node == "superior" else 1.0
    local = np.array([v.node_offset * w, sign * h / 2])
    c, s = math.cos(v.angle), math.sin(v.angle)
    x, y = local @ np.array([[c, s], [-s, c]])
    radius = max(1.0, v.node_depth * h)
    return v.centre[0] * side + float(x), v.centre[1] * side + float(y), radius


def _fill(layer: np.ndarray, pts: np.ndarray, value: float) -> None:
    cv2.fillPoly(layer, [np.round(pts * 4).astype(np.int32)], value, lineType=cv2.LINE_AA, shift=2)


def _render(s: _Spine) -> np.ndarray:
    """The slice (float, 0..1), posed."""
    side = s.size
    rng = image_rng(s.seed, 41, s.index)
    img = np.zeros((side, side), np.float32)
    # soft tissue of the back and abdomen: a broad band, fat brighter at the back
    body = np.array([[0.05, 0], [0.98, 0], [0.98, 1], [0.02, 1]]) * side
    _fill(img, body, 0.32)
    fat = np.array([[0.82, 0], [0.98, 0], [0.98, 1], [0.84, 1]]) * side
    _fill(img, fat, 0.62)
    # canal (CSF, bright on T2) and cord, behind the bodies, following their centres
    centres = np.array([v.centre for v in s.vertebrae]) * side
    depth_px = float(np.mean([v.depth for v in s.vertebrae])) * side
    canal_x = centres[:, 0] + depth_px * 0.62
    ys = np.concatenate([[0.0], centres[:, 1], [side * 1.0]])
    xs = np.concatenate([[canal_x[0]], canal_x, [canal_x[-1] + 0.02 * side]])
    canal_w = 0.055 * side
    left = np.stack([xs - canal_w / 2, ys], axis=1)
    right = np.stack([xs + canal_w / 2, ys], axis=1)[::-1]
    _fill(img, np.concatenate([left, right]), 0.92)
    conus = s.vertebrae[1].centre[1] * side  # the cord ends at about L1
    cord = np.array([[xs[0] - canal_w / 5, 0], [xs[0] + canal_w / 5, 0], [canal_x[1] + canal_w / 8, conus],
                     [canal_x[1] - canal_w / 8, conus]])  # fmt: skip
    _fill(img, cord, 0.45)
    # posterior elements: laminae and spinous processes behind the canal
    for cx, cy in zip(canal_x, centres[:, 1], strict=True):
        spinous = np.array([[cx + canal_w * 0.6, cy - 0.03 * side], [cx + 0.16 * side, cy - 0.01 * side],
                            [cx + 0.16 * side, cy + 0.02 * side], [cx + canal_w * 0.6, cy + 0.03 * side]])  # fmt: skip
        _fill(img, spinous, 0.5 + float(rng.uniform(-0.05, 0.05)))
    # discs between the bodies (and one below L5, above the sacrum)
    for k, (a, dark) in enumerate(zip(s.vertebrae, s.discs_dark, strict=True)):
        nxt = s.vertebrae[k + 1] if k + 1 < len(s.vertebrae) else None
        y_top = (a.centre[1] + a.height / 2) * side
        y_bottom = (nxt.centre[1] - nxt.height / 2) * side if nxt else y_top + 0.03 * side
        cx = (a.centre[0] + (nxt.centre[0] if nxt else a.centre[0] + 0.02)) / 2 * side
        axes = (int(a.depth * side * 0.5), max(1, int((y_bottom - y_top) * 0.75)))
        cv2.ellipse(img, (int(cx), int((y_top + y_bottom) / 2)), axes, math.degrees(a.angle), 0, 360,
                    0.38 if dark else 0.82, -1, cv2.LINE_AA)  # fmt: skip
    # sacrum: a wedge below L5
    last = s.vertebrae[-1]
    sy = (last.centre[1] + last.height / 2 + 0.035) * side
    sx = last.centre[0] * side + 0.03 * side
    sacrum = np.array([[sx - 0.09 * side, sy], [sx + 0.08 * side, sy - 0.01 * side], [sx + 0.16 * side, side * 1.0],
                       [sx + 0.02 * side, side * 1.0]])  # fmt: skip
    _fill(img, sacrum, 0.5)
    # vertebral bodies: marrow with texture and a dark cortical rim; nodes notch their endplates
    texture = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), max(0.6, side / 160))
    for v in s.vertebrae:
        mask = np.zeros((side, side), np.float32)
        outline = _body_polygon(v, side)
        _fill(mask, outline, 1.0)
        marrow = 0.56 + float(rng.uniform(-0.06, 0.06))
        inside = mask > 0.5
        img[inside] = marrow + 0.05 * texture[inside]
        cv2.polylines(img, [np.round(outline * 4).astype(np.int32)], True, 0.12, 1, cv2.LINE_AA, 2)
        if v.node is not None:
            x, y, r = _node_centre(v, side)
            notch = np.zeros_like(mask)
            cv2.circle(notch, (round(x * 4), round(y * 4)), round(r * 4), 1.0, -1, cv2.LINE_AA, 2)
            notch *= mask
            rim = cv2.dilate((notch > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & inside
            img[rim & (notch <= 0.5)] = 0.15
            img[notch > 0.5] = 0.8
    # pose, coil sensitivity, Rician noise
    posed = cv2.warpAffine(img, _pose_matrix(s), (side, side), flags=cv2.INTER_LINEAR, borderValue=0.0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    img = (posed * (1.0 + gx * (xx - 0.5) + gy * (yy - 0.5))).astype(np.float32)
    sigma = float(rng.uniform(0.02, 0.05))
    noisy = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    return np.clip(noisy, 0, 1).astype(np.float32)


def _pose_matrix(s: _Spine) -> np.ndarray:
    angle, scale, dx, dy = s.pose
    m = cv2.getRotationMatrix2D((s.size / 2, s.size / 2), angle, scale)
    m[:, 2] += np.array([dx * s.size, dy * s.size])
    return m


def vertebra_masks(s: _Spine) -> list[np.ndarray]:
    """Each vertebral body's mask (bool) as the posed image shows it: its outline through the pose, filled."""
    m = _pose_matrix(s)
    out = []
    for v in s.vertebrae:
        outline = _body_polygon(v, s.size)
        posed = outline @ m[:, :2].T + m[:, 2]
        mask = np.zeros((s.size, s.size), np.float32)
        _fill(mask, posed, 1.0)
        out.append(mask > 0.5)
    return out


def _dicom_attributes(s: _Spine) -> dict[str, Any]:
    mm = round(FIELD_OF_VIEW_MM / s.size, 6)
    from pydicom.uid import generate_uid

    return {
        "Modality": "MR",
        "PatientID": f"patient{s.patient_no:05d}",
        "PatientName": f"PHANTOM^RADFLOW^{s.patient_no:05d}",
        "PatientBirthDate": "19000101",
        "PatientSex": "O",
        "InstitutionName": "RADFLOW PHANTOM HOSPITAL",
        "BodyPartExamined": "LSPINE",
        "StudyDescription": "MR LUMBAR SPINE",
        "SeriesDescription": "SAG T2 TSE",
        "StudyID": str(s.study_no),
        "SeriesNumber": "1",
        "InstanceNumber": "1",
        "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
        "ScanningSequence": "SE",
        "SequenceVariant": "SK",
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": f"{s.tr_ms:g}",
        "EchoTime": f"{s.echo_ms:g}",
        "EchoTrainLength": "16",
        "MagneticFieldStrength": "1.5",
        "SliceThickness": "4",
        "PixelSpacing": [mm, mm],
        # sagittal, anterior to the left: rows run posterior (+y), columns inferior (-z)
        "ImageOrientationPatient": [0, 1, 0, 0, 0, -1],
        "ImagePositionPatient": [0, -FIELD_OF_VIEW_MM / 2, FIELD_OF_VIEW_MM / 2],
        "PositionReferenceIndicator": "",
        "Manufacturer": "radflow phantom",
        "PatientPosition": "HFS",
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[f"radflow-synth-spine:{s.seed}:{s.patient_no}:{s.study_no}"]),
        "StudyDate": "",
        "StudyTime": "",
        "ReferringPhysicianName": "",
        "AccessionNumber": "",
    }


def _draw_and_write(job: tuple[_Spine, str]) -> None:
    from radflow.data.dicom import write_dicom

    s, out = job
    img = _render(s)
    path = Path(out) / s.dicom_path
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 2**_BITS - 1
    write_dicom(
        path,
        np.round(img * top).astype(np.uint16),
        bits_stored=_BITS,
        window=(top * 0.45, top * 0.9),
        attributes=_dicom_attributes(s),
        uid_seed=f"radflow-synth-spine:{s.seed}:{s.index}",
    )


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box (x, y, width, height in pixel edges) of everything in ``mask``."""
    found = mask_boxes(mask)
    x0, y0 = min(b[0] for b in found), min(b[1] for b in found)
    x1, y1 = max(b[0] + b[2] for b in found), max(b[1] + b[3] for b in found)
    return x0, y0, x1 - x0, y1 - y0


def synth_spine(out: Path, n: int, seed: int, size: int = 256, workers: int | None = None) -> dict[str, Any]:
    """Write ``n`` phantom sagittal spine MR slices under ``out`` with their exact truth; returns a summary.

    Images are ``images/patientNNNNN/studyN/sag_t2.dcm``; the truth files are described in the module
    docstring. The same ``seed`` gives the same bytes for any ``workers``.
    """
    check_common(n, seed, size, workers)
    start = time.perf_counter()
    out = Path(out)
    studies = _plan(n, seed, size)
    out.mkdir(parents=True, exist_ok=True)
    used = run_jobs(_draw_and_write, [(s, str(out)) for s in studies], workers)
    boxes = {s.index: [_box(m) for m in vertebra_masks(s)] for s in studies}
    _write_truth(out, studies, boxes)
    nodes = sum(v.node is not None for s in studies for v in s.vertebrae)
    return {
        "out": str(out),
        "kind": "spine",
        "images": len(studies),
        "patients": len({s.patient_no for s in studies}),
        "vertebrae": len(studies) * len(SPINE_LEVELS),
        "schmorl_nodes": nodes,
        "images_with_nodes": sum(any(v.node for v in s.vertebrae) for s in studies),
        "levels": list(SPINE_LEVELS),
        "width": size,
        "height": size,
        "pixel_spacing_mm": round(FIELD_OF_VIEW_MM / size, 6),
        "seed": seed,
        "workers": used,
        "truth": {"boxes": COCO_FILE, "vertebrae": "vertebrae.csv", "patients": "patients.csv"},
        "seconds": round(time.perf_counter() - start, 2),
    }


def _write_truth(out: Path, studies: list[_Spine], boxes: dict[int, list[tuple[int, int, int, int]]]) -> None:
    mm = FIELD_OF_VIEW_MM / studies[0].size if studies else 1.0
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    with (out / "vertebrae.csv").open("w", newline="") as f, (out / "patients.csv").open("w", newline="") as p:
        table, patients = csv.writer(f, lineterminator="\n"), csv.writer(p, lineterminator="\n")
        table.writerow(SPINE_COLUMNS)
        patients.writerow(["path", "patient_id", "study_id"])
        for image_id, s in enumerate(studies, start=1):
            patient, study = f"patient{s.patient_no:05d}", f"study{s.study_no}"
            patients.writerow([s.dicom_path, patient, study])
            images.append({"id": image_id, "file_name": s.dicom_path, "height": s.size, "width": s.size})
            for v, (x, y, w, h) in zip(s.vertebrae, boxes[s.index], strict=True):
                node = int(v.node is not None)
                depth_mm = round(v.node_depth * v.height * s.size * s.pose[1] * mm, 2) if node else 0.0
                table.writerow([s.dicom_path, patient, study, v.level, x, y, w, h, node, v.node or "", depth_mm])
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h],
                    "level": v.level, "schmorl": node,
                })  # fmt: skip
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": VERTEBRA_LABEL}]}
    (out / COCO_FILE).write_text(json.dumps(coco, indent=1))
