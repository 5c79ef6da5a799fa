"""Served masks/s: ``radflow serve`` answering a segmentation model over HTTP against the same work in process.

A small_unet (random weights: speed does not depend on them; at 0.5 their maps are speckled, so the RLE
is longer than a trained model's and the encoding figure is an upper bound) exported with
``radflow.export`` is served by ``radflow serve --model`` (auth off, every answer logged) and driven at
16 connections by wrk (``bench/_wrk.lua``) or, where wrk is missing, the httpx client of bench/serve.py,
posting multipart 512 px PNGs. In process, the same images go through decode + preprocess + ONNX Runtime
(batches of 8) + the mask encoding the server answers with (``RadflowModel.to_prediction``: masks at the
input's size, areas, boxes, COCO RLE; then the JSON body). The encoding alone is timed per image (ms).

Goal (issue 14): served masks/s at c16 >= 0.9 of the in-process rate.

    .venv/bin/python bench/serve_masks.py [--seconds 10] [--size 256] [--clients wrk httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import (  # the server, loads and bodies bench/serve.py measures with
    Load,
    _clients,
    _httpx_load,
    _idle_cpu,
    _images,
    _measure,
    _multipart,
    _radflow,
    _wrk,
)

from _table import print_ratio, print_table

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
STRUCTURES = ["Right Lung", "Left Lung", "Heart", "Pleural Effusion", "Pneumothorax", "Lung Lesion"]
CONCURRENCY = 16
GOAL = 0.9


def _export(size: int, tmp: Path) -> Path:
    import torch

    from radflow.data.preprocess import PreprocessSpec
    from radflow.export.onnx import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    torch.manual_seed(0)
    model = create_model("small_unet", len(STRUCTURES)).eval()
    meta = ModelMeta(
        arch="small_unet",
        task="segmentation",
        labels=STRUCTURES,
        num_outputs=len(STRUCTURES),
        preprocess=PreprocessSpec(size=size).to_dict(),
    )
    return export_onnx(model, meta, tmp / "small_unet.onnx")


def _in_process(onnx: Path, images: list[bytes], seconds: float, batch: int = 8) -> dict[str, float]:
    """Masks/s of decode + preprocess + ORT + encoding in batches of ``batch``, and the encoding's ms per image."""
    from radflow.runtime import RadflowModel

    model = RadflowModel.load(onnx)
    done, encode_s = 0, 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or not done:
        chunk = [model.decode(images[(done + k) % len(images)]) for k in range(batch)]
        maps, _ = model.run(np.stack([model.prepare(image) for image in chunk]), cam=False)
        t0 = time.perf_counter()
        for image, image_maps in zip(chunk, maps, strict=True):
            json.dumps(model.to_prediction(image_maps, image.pixels.shape[:2]).to_dict())
        encode_s += time.perf_counter() - t0
        done += batch
    elapsed = time.perf_counter() - start
    return {"rate": done / elapsed, "encode_ms": 1000 * encode_s / done, "images": done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured seconds per client (and in process).")
    parser.add_argument("--size", type=int, default=256, help="Model input size in pixels.")
    parser.add_argument("--clients", nargs="+", default=["wrk", "httpx"], choices=["wrk", "httpx"])
    args = parser.parse_args()
    clients = _clients(args.clients)
    images = _images(16)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        onnx = _export(args.size, tmp)
        before = _in_process(onnx, images, args.seconds)
        bodies = [_multipart(png) for png in images]
        body_dir = tmp / "bodies"
        body_dir.mkdir()
        for i, body in enumerate(bodies):
            (body_dir / f"{i}.bin").write_bytes(body)
        server = _radflow(onnx, tmp)
        loads: dict[str, Load] = {}
        try:
            server.wait_ready()
            _idle_cpu([server])
            url = server.url + "/v1/predict"
            for client in clients:
                if client == "wrk":

                    def drive(s: float) -> Load:
                        return _wrk(url, body_dir, len(bodies), CONCURRENCY, s)
                else:

                    def drive(s: float) -> Load:
                        return asyncio.run(_httpx_load(url, bodies, CONCURRENCY, s))

                loads[client] = _measure(server, drive, args.seconds, warmup=2.0)
        finally:
            server.stop()
        after = _in_process(onnx, images, args.seconds)
    in_rate = (before["rate"] + after["rate"]) / 2
    encode_ms = (before["encode_ms"] + after["encode_ms"]) / 2
    print(
        f"small_unet at {args.size} px, {len(STRUCTURES)} structures, 512 px PNG uploads, {os.cpu_count()} CPUs, "
        f"{args.seconds:g} s per setup; in process = mean of a run before and after the server"
    )
    rows: list[list[object]] = [["in process (batch 8)", "-", "-", in_rate, "-", "-", "-", 0]]
    for client, load in loads.items():
        rows.append(
            ["radflow serve", client, CONCURRENCY, load.rate, load.p50_ms, load.p99_ms, load.cpu_ms, load.errors]
        )
    print_table(["setup", "client", "conc", "masks/s", "p50 ms", "p99 ms", "CPU ms/req", "errors"], rows)
    print(f"mask encoding (masks at input size, areas, boxes, RLE, JSON): {encode_ms:.2f} ms per request")
    for client, load in loads.items():
        print_ratio(f"served c{CONCURRENCY} ({client}) / in process masks/s", load.rate / in_rate, GOAL)
    print_ratio("mask encoding / in-process time per mask", encode_ms / (1000 / in_rate))


if __name__ == "__main__":
    main()
