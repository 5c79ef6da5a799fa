"""A tiny detection dataset for tests: bright squares on noise, their boxes in an RSNA Pneumonia label file,
ingested and split by radflow's own readers (``rsna-boxes``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from radflow.data.ingest import IngestOptions, ingest
from radflow.data.split import split_dataset

__all__ = ["SHAPE", "make_detection_dataset"]

SHAPE = (40, 48)
"""Original height x width of every image (not square: the pad/resize geometry is exercised)."""


def make_detection_dataset(root: Path, n: int = 24, size: int = 32, seed: int = 0) -> Path:
    """``n`` images, two of every three with one or two boxes of "Lung Opacity"; returns the split dataset folder."""
    rng = np.random.default_rng(seed)
    src = root / "rsna"
    src.mkdir(parents=True)
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        img = rng.normal(60, 10, SHAPE)
        boxes = (
            []
            if i % 3 == 2
            else [(4 + (i % 5) * 5, 4 + (i % 4) * 4, 12, 14)] + ([(28, 20, 14, 12)] if i % 4 == 0 else [])
        )
        for x, y, w, h in boxes:
            img[y : y + h, x : x + w] += 120
            lines.append(f"q{i:02d},{x},{y},{w},{h},1")
        if not boxes:
            lines.append(f"q{i:02d},,,,,0")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(src / f"q{i:02d}.png")
    (src / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    out = root / "ds"
    ingest(src, "rsna-boxes", out, IngestOptions(size=size, workers=1))
    split_dataset(out, val=0.25, test=0.25, seed=seed)
    return out
