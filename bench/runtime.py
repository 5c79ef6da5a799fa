"""Inference speed: PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8 (static QDQ), on CPU.

For each architecture (random weights: speed does not depend on them) the model is exported with
``radflow.export`` and quantized with the same calibration path as ``radflow export --int8``
(calibrated on a handful of synthetic radiograph-like images). The three engines run the same
normalised input at batch 1 and 8 on the same number of threads (all cores by default), in
interleaved rounds so a shared machine's load hits all three alike; the table gives the best round
in ms per image (timeit's rule: the fastest run is the one least disturbed by other processes).
Goals: ORT FP32 >= 2x eager at batch 8; INT8 >= 1.5x FP32 where the CPU has integer dot-product
instructions (VNNI/AMX) — reported per architecture, since dense blocks and depthwise convs gain
little without them.

    .venv/bin/python bench/runtime.py [--archs densenet121 small_cnn] [--size 224] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnxruntime.quantization import CalibrationDataReader

from radflow.data.preprocess import PreprocessSpec, to_model_input
from radflow.export.onnx import export_onnx
from radflow.export.quantize import cpu_int8_features, quantize_int8
from radflow.runtime.session import RadflowModel, available_cores
from radflow.train.checkpoint import ModelMeta
from radflow.train.models import create_model

from _table import print_ratio, print_table

LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


class _Images(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]):
        self.batches, self.i = batches, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return {"image": self.batches[self.i - 1]} if self.i <= len(self.batches) else None

    def rewind(self) -> None:
        self.i = 0


def _synthetic(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Grey images with a bright, blurred disc, shaped like what calibration sees in practice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = 0.3 + 0.2 * yy + rng.normal(0, 0.05, (size, size))
        cy, cx, r = rng.uniform(0.3, 0.7, 3) * [1, 1, 0.4]
        img += 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def _timer(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_arch(arch: str, size: int, rounds: int, threads: int, tmp: Path) -> list[list[object]]:
    spec = PreprocessSpec(size=size)
    torch.manual_seed(0)
    model = create_model(arch, len(LABELS)).eval()
    meta = ModelMeta(arch=arch, task="multilabel", labels=LABELS, num_outputs=len(LABELS), preprocess=spec.to_dict())
    fp32 = export_onnx(model, meta, tmp / f"{arch}.onnx")
    calibration = [to_model_input(b, spec) for b in np.split(_synthetic(16, size), 2)]
    int8 = tmp / f"{arch}.int8.onnx"
    quantize_int8(fp32, int8, _Images(calibration))
    sessions = {
        "ORT FP32": RadflowModel.load(fp32, threads=threads),
        "ORT INT8": RadflowModel.load(int8, threads=threads),
    }
    rows: list[list[object]] = []
    for batch in (1, 8):
        x = to_model_input(_synthetic(batch, size, seed=1), spec)
        engines: dict[str, Callable[[], object]] = {"PyTorch eager": lambda x=x: model(torch.from_numpy(x))}
        for name, rt in sessions.items():
            engines[name] = lambda rt=rt, x=x: rt.session.run([rt.meta.output], {"image": x})
        times: dict[str, list[float]] = {name: [] for name in engines}
        with torch.inference_mode():
            for fn in engines.values():
                fn()  # warm-up: allocation, kernel selection
            for _ in range(rounds):
                for name, fn in engines.items():
                    times[name].append(_timer(fn))
        for name, samples in times.items():
            rows.append([arch, name, batch, 1000.0 * min(samples) / batch])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["densenet121", "small_cnn"])
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per engine and batch size")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all cores)")
    args = parser.parse_args()
    cores = args.threads or available_cores()
    torch.set_num_threads(cores)
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            rows += bench_arch(arch, args.size, args.rounds, cores, Path(tmp))
    features = ", ".join(cpu_int8_features()) or "none (no VNNI/AMX)"
    print(f"{args.size} px, 1 channel, {len(LABELS)} labels, {cores} threads; CPU int8 dot-product: {features}\n")
    print_table(["arch", "engine", "batch", "ms/image"], rows)
    print()
    ms = {(r[0], r[1], r[2]): float(r[3]) for r in rows}  # type: ignore[arg-type]
    for arch in args.archs:
        for batch in (1, 8):
            goal = 2.0 if batch == 8 else None
            print_ratio(
                f"{arch} ORT FP32 / eager speed, batch {batch}",
                ms[arch, "PyTorch eager", batch] / ms[arch, "ORT FP32", batch],
                goal=goal,
            )
        for batch in (1, 8):
            goal = 1.5 if batch == 8 else None
            print_ratio(
                f"{arch} INT8 / FP32 speed, batch {batch}",
                ms[arch, "ORT FP32", batch] / ms[arch, "ORT INT8", batch],
                goal=goal,
            )


if __name__ == "__main__":
    main()
