"""Tiny datasets built directly in the on-disk format, for tests that need one fast.

Images carry a learnable signal (a bright disc per positive label, a size that grows with the
regression target) so a few training steps can move metrics, yet they take milliseconds to make.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radflow.data.dataset import ShardWriter, write_dataset
from radflow.data.preprocess import PreprocessSpec

__all__ = ["make_dataset"]


def make_dataset(
    root: Path,
    task: str = "multilabel",
    n: int = 96,
    size: int = 32,
    labels: tuple[str, ...] = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax"),
    patients: int | None = None,
    split: bool = True,
    seed: int = 0,
) -> Path:
    """Write a dataset of ``n`` images under ``root``; returns ``root``.

    multilabel: each label has its own disc position; multiclass: one disc position per class;
    regression: a single "boneage" target (months) encoded as disc radius, plus sex.
    With ``split`` the patients are assigned 60/20/20 to train/val/test.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec(size=size)
    writer = ShardWriter(root, size, shard_images=max(8, n // 3))
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
        else:
            y = np.array([rng.uniform(12, 216)], np.float32)
        if task == "regression":
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
