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
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from radflow.data.maskfiles import read_mask_image, siim_encode, write_mask_png

__all__ = ["MASKS_DIR", "mask_path", "write_masks", "write_truth_tables"]

MASKS_DIR = "masks"


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
