"""Tiny exported models and images for the service tests (random-init small_cnn at 32 px, no training)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["jpeg_bytes", "make_onnx", "png_bytes"]


def make_onnx(root: Path, seed: int = 0, task: str = "multilabel", size: int = 32, n: int = 24) -> Path:
    """An exported small_cnn ONNX file (with CAM and embedding outputs and reference.json) in ``root``.

    ``n``: images in the fixture dataset the model (and its drift reference) is made from.
    """
    from radflow.export import export_model
    from tests.export.checkpoints import make_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    checkpoint, _ = make_checkpoint(root, task=task, size=size, n=n, seed=seed)
    return Path(export_model(str(checkpoint), root / f"{task}-{seed}.onnx", parity_n=4)["onnx"])


def png_bytes(seed: int = 0, shape: tuple[int, int] = (40, 36)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()
