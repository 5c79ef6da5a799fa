"""Tiny datasets built directly in the on-disk format, for tests that need one fast.

Images carry a learnable signal (a bright disc per positive label, a size that grows with the
regression target, a bright shape per structure with its exact mask) so a few training steps can
move metrics, yet they take milliseconds to make.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radflow.data.dataset import ShardWriter, write_dataset
from radflow.data.masks import pack
from radflow.data.preprocess import PreprocessSpec

__all__ = ["CHEST_LABELS", "SEGMENTATION_STRUCTURES", "make_dataset", "structure_masks"]

CHEST_LABELS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax")
"""The labels of the classification datasets unless ``labels`` says otherwise."""
SEGMENTATION_STRUCTURES = ("Left Lung", "Right Lung", "Lesion")
"""The structures of ``make_dataset(task="segmentation")`` unless ``labels`` says otherwise."""


def structure_masks(
    size: int, k: int, rng: np.random.Generator, present: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(k, size, size)`` and their presence: structure j is a rectangle (even j) or a disc (odd j).

    Shapes are placed and sized at random, so they overlap at times (a lesion inside a lung field);
    a structure is drawn with probability 0.8 unless ``present`` says which are.
    """
    yy, xx = np.mgrid[0:size, 0:size]
    if present is None:
        present = rng.random(k) < 0.8
    masks = np.zeros((k, size, size), dtype=bool)
    for j in range(k):
        if not present[j]:
            continue
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        r = rng.uniform(0.1, 0.22) * size
        if j % 2:
            masks[j] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            masks[j] = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * 0.7)
    return masks, present.astype(np.float32)


def make_dataset(
    root: Path,
    task: str = "multilabel",
    n: int = 96,
    size: int = 32,
    labels: tuple[str, ...] | None = None,
    patients: int | None = None,
    split: bool = True,
    seed: int = 0,
) -> Path:
    """Write a dataset of ``n`` images under ``root``; returns ``root``.

    multilabel: each label has its own disc position; multiclass: one disc position per class;
    regression: a single "boneage" target (months) encoded as disc radius, plus sex; segmentation:
    ``labels`` (default :data:`SEGMENTATION_STRUCTURES`) are structures drawn by :func:`structure_masks`,
    each brightening the image by its own amount, packed into the mask shards; a label column says
    whether the image shows the structure.
    With ``split`` the patients are assigned 60/20/20 to train/val/test.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec(size=size)
    writer = ShardWriter(root, size, shard_images=max(8, n // 3))
    labels = labels or (SEGMENTATION_STRUCTURES if task == "segmentation" else CHEST_LABELS)
    if task == "segmentation":
        mask_writer = ShardWriter.for_masks(root, size, len(labels), shard_images=max(8, n // 3))
    patients = patients or max(4, n // 3)
    yy, xx = np.mgrid[0:size, 0:size]
    label_names = ["boneage"] if task == "regression" else list(labels)
    centres = [(size * (0.25 + 0.5 * (i % 2)), size * (0.25 + 0.5 * ((i // 2) % 2))) for i in range(len(label_names))]
    rows = []
    for i in range(n):
        img = rng.normal(0.3, 0.05, (size, size))
        if task == "multilabel":
            y = (rng.random(len(label_names)) < 0.35).astype(np.float32)
            if rng.random() < 0.1:
                y[rng.integers(len(label_names))] = np.nan
        elif task == "multiclass":
            y = np.zeros(len(label_names), np.float32)
            y[rng.integers(len(label_names))] = 1.0
        elif task == "regression":
            y = np.array([rng.uniform(12, 216)], np.float32)
        if task == "segmentation":
            masks, y = structure_masks(size, len(label_names), rng)
            for j, mask in enumerate(masks):
                img[mask] += 0.25 + 0.15 * j
            mask_writer.add(pack(masks))
        elif task == "regression":
            radius = size * (0.1 + 0.3 * y[0] / 228)
            img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2] += 0.5
        else:
            for (cy, cx), value in zip(centres, y, strict=True):
                if value == 1:
                    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (size * 0.12) ** 2] += 0.5
        pixels = np.clip(img * 255, 0, 255).astype(np.uint8)
        shard, offset = writer.add(pixels)
        patient = f"p{i % patients:04d}"
        row = {
            "image_id": f"{i:020x}",
            "source_key": f"{i:016x}",
            "sha256": f"{i:064x}",
            "patient_id": patient,
            "study_id": f"{patient}-s{i // patients}",
            "view": "frontal",
            "projection": "PA" if i % 3 else "AP",
            "sex": "M" if rng.random() < 0.5 else "F",
            "age": float(rng.integers(20, 90)),
            "split": "",
            "official_split": "",
            "shard": shard,
            "offset": offset,
        }
        row.update(dict(zip(label_names, y.tolist(), strict=True)))
        rows.append(row)
    writer.close()
    if task == "segmentation":
        mask_writer.close()
    manifest = pd.DataFrame(rows)
    if split:
        ids = sorted(manifest["patient_id"].unique())
        order = rng.permutation(len(ids))
        assign = {}
        for rank, idx in enumerate(order):
            frac = rank / len(ids)
            assign[ids[idx]] = "train" if frac < 0.6 else ("val" if frac < 0.8 else "test")
        manifest["split"] = manifest["patient_id"].map(assign)
    task_name = "regression" if task == "regression" else task
    write_dataset(
        root,
        manifest,
        labels=label_names,
        task=task_name,  # type: ignore[arg-type]
        spec=spec,
        source={"format": "fixture", "path": str(root)},
    )
    return root
