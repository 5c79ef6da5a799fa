"""Phantoms' ground-truth masks on disk (``radflow synth chest|hand --masks``), in the formats users bring.

Beside each phantom layout the generator writes, for the structures it drew:

* ``masks/<image path without extension>/<Structure>.png``: one 0/255 PNG per structure and image,
  an empty one when the image does not show it (every structure is annotated on every image);
* ``train-rle.csv``: ``ImageId, Structure, EncodedPixels`` in SIIM-ACR's run-length encoding, the
  ImageId being the image's path without extension;
* ``structures.txt`` (the structures in bit order) and ``patients.csv`` (``path, patient_id,
  study_id``), so ``radflow ingest OUT --format masks`` and ``--format siim`` both read the folder as a
  segmentation source with the phantom's patients. The PNG files are named after structures, never
  after images, so the classification adapters still find exactly one file per image.
* ``annotations.json`` (``--boxes``): COCO ``bbox`` annotations, one box per connected region of each
  finding's mask (:data:`BOX_STRUCTURES`), so ``radflow ingest OUT --format coco-boxes`` reads the folder
  as a detection source. COCO has no patients: each image is its own patient there.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from radflow.data.maskfiles import read_mask_image, siim_encode, write_mask_png

__all__ = [
    "BOX_STRUCTURES",
    "COCO_FILE",
    "MASKS_DIR",
    "mask_boxes",
    "mask_path",
    "write_coco_boxes",
    "write_masks",
    "write_truth_tables",
]

MASKS_DIR = "masks"
COCO_FILE = "annotations.json"
BOX_STRUCTURES = ("Pleural Effusion", "Pneumothorax", "Lung Lesion")
"""The findings phantoms draw that get boxes (the anatomy, lungs and heart, is on every film)."""


def _stem(rel_image: str) -> str:
    return rel_image.rsplit(".", 1)[0]


def mask_path(out: Path, rel_image: str, structure: str) -> Path:
    """Where the mask of ``structure`` for the image at ``rel_image`` (relative to ``out``) is written."""
    return Path(out) / MASKS_DIR / _stem(rel_image) / f"{structure}.png"


def write_masks(out: Path, rel_image: str, structures: tuple[str, ...], masks: np.ndarray) -> None:
    """Write one image's masks ``(K, H, W)`` as per-structure PNGs."""
    for name, mask in zip(structures, masks, strict=True):
        write_mask_png(mask_path(out, rel_image, name), mask)


def write_truth_tables(out: Path, structures: tuple[str, ...], images: list[tuple[str, str, str]]) -> dict[str, int]:
    """Write ``structures.txt``, ``patients.csv`` and ``train-rle.csv`` for ``images`` (rel path, patient, study).

    The RLE table is made from the mask PNGs already written, so both forms hold the same pixels.
    Returns how many images show each structure.
    """
    out = Path(out)
    (out / "structures.txt").write_text("".join(f"{name}\n" for name in structures))
    shown = dict.fromkeys(structures, 0)
    with (out / "patients.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "patient_id", "study_id"])
        writer.writerows(images)
    with (out / "train-rle.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "Structure", "EncodedPixels"])
        for rel, _, _ in images:
            for name in structures:
                mask = read_mask_image(mask_path(out, rel, name)) != 0
                shown[name] += int(mask.any())
                writer.writerow([_stem(rel), name, siim_encode(mask)])
    return shown


def mask_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(x, y, width, height)`` in pixel edges of each 8-connected region of a boolean mask, top-left first."""
    from scipy import ndimage

    regions, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    out = []
    for rows, cols in ndimage.find_objects(regions):
        out.append((int(cols.start), int(rows.start), int(cols.stop - cols.start), int(rows.stop - rows.start)))
    return sorted(out, key=lambda b: (b[1], b[0]))


def write_coco_boxes(out: Path, structures: tuple[str, ...], images: list[str]) -> dict[str, int]:
    """Write ``annotations.json``: the boxes of :data:`BOX_STRUCTURES` among ``structures`` from the mask PNGs
    already written for ``images`` (paths relative to ``out``). Returns the boxes per structure."""
    out = Path(out)
    names = [name for name in structures if name in BOX_STRUCTURES]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(names)]
    coco_images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    counts = dict.fromkeys(names, 0)
    for image_id, rel in enumerate(images, start=1):
        height, width = 0, 0
        for k, name in enumerate(names):
            mask = read_mask_image(mask_path(out, rel, name)) != 0
            height, width = mask.shape
            for x, y, w, h in mask_boxes(mask):
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": k + 1, "bbox": [x, y, w, h]}
                )
                counts[name] += 1
        coco_images.append({"id": image_id, "file_name": rel, "height": height, "width": width})
    coco = {"images": coco_images, "annotations": annotations, "categories": categories}
    (out / COCO_FILE).write_text(json.dumps(coco, indent=1))
    return counts
