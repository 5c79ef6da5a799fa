"""Serving throughput and latency: radflow serve vs in-process ONNX Runtime vs a naive FastAPI + PyTorch server.

One DenseNet-121 (random weights: speed does not depend on them) at 224 px is exported with
``radflow.export``; the same PNG uploads (512 x 512 grey) go to:

1. in process: decode + preprocess + ORT in batches of 8, one thread of control — the raw rate;
2. ``radflow serve`` (uvicorn subprocess, dynamic batching: batch 8, 10 ms window, every
   prediction logged with its input stored) at concurrency 16 and 4 — goals >= 0.95 and >= 0.85
   of the raw rate;
3. a naive FastAPI server running PyTorch eager per request (the usual first attempt) at
   concurrency 4 — goal: radflow >= 3x its throughput;
4. latency percentiles of radflow at concurrency 1 and 4 — goal p99 at c4 < 1 s.

    .venv/bin/python bench/serve.py [--seconds 12] [--size 224] [--arch densenet121]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import print_ratio, print_table

LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images(n: int, side: int = 512) -> list[bytes]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = []
    for _ in range(n):
        img = 0.3 + 0.3 * yy + rng.normal(0, 0.05, (side, side)) + 0.2 * np.sin(xx * rng.uniform(3, 9))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _export(arch: str, size: int, tmp: Path) -> tuple[Path, Path]:
    import torch

    from radflow.data.preprocess import PreprocessSpec
    from radflow.export.onnx import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, len(LABELS)).eval()
    spec = PreprocessSpec(size=size)
    meta = ModelMeta(arch=arch, task="multilabel", labels=LABELS, num_outputs=len(LABELS), preprocess=spec.to_dict())
    weights = tmp / "weights.pt"
    torch.save(model.state_dict(), weights)
    return export_onnx(model, meta, tmp / f"{arch}.onnx"), weights


def _in_process(onnx: Path, images: list[bytes], seconds: float, batch: int = 8) -> float:
    from radflow.runtime import RadflowModel

    model = RadflowModel.load(onnx)
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds or done == 0:
        chunk = [images[(i + k) % len(images)] for k in range(batch)]
        pixels = np.stack([model.prepare(model.decode(data)) for data in chunk])
        model.predict_batch(pixels)
        done += batch
        i += batch
    return done / (time.perf_counter() - start)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code in (200, 405):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout} s")


async def _load(url: str, images: list[bytes], concurrency: int, seconds: float) -> tuple[float, list[float], int]:
    """(requests/s, latencies in s, errors) of ``concurrency`` clients posting PNGs for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                answer = await client.post(url, content=images[i % len(images)], headers={"content-type": "image/png"})
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += concurrency

        # warm-up: one round at this concurrency, not counted
        end = time.perf_counter() + 1.5
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        latencies.clear()
        start = time.perf_counter()
        end = start + seconds
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, errors


def _stats(url: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{url}/v2/models/stats").json()["model_stats"][0]
    return stats


def _pct(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000, q)) if latencies else float("nan")


def _naive_script() -> str:
    return textwrap.dedent(
        f"""
        import sys
        import torch, uvicorn
        from fastapi import FastAPI, Request
        from radflow.data.decode import decode_image
        from radflow.data.preprocess import PreprocessSpec, prepare_pixels, to_model_input
        from radflow.train.models import create_model

        arch, size, weights, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        labels = {LABELS!r}
        model = create_model(arch, len(labels))
        model.load_state_dict(torch.load(weights))
        model.eval()
        spec = PreprocessSpec(size=size)
        app = FastAPI()

        @app.post("/predict")
        async def predict(request: Request) -> dict:
            image = decode_image(await request.body())
            x = torch.from_numpy(to_model_input(prepare_pixels(image.pixels, size), spec))
            with torch.no_grad():
                probs = torch.sigmoid(model(x))[0].tolist()
            return {{"findings": [{{"label": l, "probability": p}} for l, p in zip(labels, probs)]}}

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
        """
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=12.0, help="Measured seconds per load level.")
    args = parser.parse_args()
    images = _images(32)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        onnx, weights = _export(args.arch, args.size, tmp)
        # The raw rate is measured before and after the served runs and averaged: on a shared
        # machine the speed drifts over minutes, and one measurement at the start would carry it.
        raw_before = _in_process(onnx, images, args.seconds / 2)

        port = _free_port()
        env = {**os.environ, "RADFLOW_MAX_BATCH_SIZE": "8", "RADFLOW_MAX_QUEUE_DELAY_MS": "10"}
        cmd = [sys.executable, "-c", "from radflow.cli import main; main()", "serve", "--model", str(onnx)]
        cmd += ["--port", str(port), "--store-url", f"sqlite:///{tmp / 'serving.db'}", "--log-level", "warning"]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        served: dict[int, tuple[float, list[float], int]] = {}
        try:
            _wait_ready(url, server, "/v2/health/ready")
            batches: dict[int, float] = {}  # mean images per ORT call at each level (warm-up included)
            for concurrency in (16, 4, 1):
                before = _stats(url)
                served[concurrency] = asyncio.run(_load(url + "/v1/predict", images, concurrency, args.seconds))
                after = _stats(url)
                calls = after["execution_count"] - before["execution_count"]
                batches[concurrency] = (after["inference_count"] - before["inference_count"]) / max(1, calls)
        finally:
            server.terminate()
            server.wait(60)
        raw_after = _in_process(onnx, images, args.seconds / 2)
        raw = (raw_before + raw_after) / 2
        from radflow.store import Store

        store = Store(f"sqlite:///{tmp / 'serving.db'}")
        logged = len(store.predictions(limit=10**7))
        store.close()

        naive_port = _free_port()
        script = tmp / "naive.py"
        script.write_text(_naive_script())
        naive = subprocess.Popen(
            [sys.executable, str(script), args.arch, str(args.size), str(weights), str(naive_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        naive_url = f"http://127.0.0.1:{naive_port}"
        try:
            _wait_ready(naive_url, naive, "/predict")
            naive_rate, naive_lat, naive_errors = asyncio.run(_load(naive_url + "/predict", images, 4, args.seconds))
        finally:
            naive.terminate()
            naive.wait(60)

    rows: list[list[object]] = [
        ["in-process decode+preprocess+ORT (batch 8), mean", "-", raw, "-", "-", "-", 0],
        ["  measured before / after the served runs", "-", f"{raw_before:.1f} / {raw_after:.1f}", "-", "-", "-", "-"],
    ]
    for concurrency in (16, 4, 1):
        rate, lat, errors = served[concurrency]
        rows.append(
            [f"radflow serve c{concurrency}", concurrency, rate, _pct(lat, 50), _pct(lat, 95), _pct(lat, 99), errors]
        )
    rows.append(
        [
            "naive FastAPI + PyTorch eager c4",
            4,
            naive_rate,
            _pct(naive_lat, 50),
            _pct(naive_lat, 95),
            _pct(naive_lat, 99),
            naive_errors,
        ]
    )
    print(f"{args.arch} {args.size} px, 512 px PNG uploads, {os.cpu_count()} CPUs, {args.seconds:g} s per level")
    print_table(["setup", "concurrency", "img/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows)
    answered = sum(len(served[c][1]) for c in served)
    per_level = ", ".join(f"c{c}: {b:.2f}" for c, b in batches.items())
    print(f"predictions logged: {logged} (answered incl. warm-up >= {answered}); mean batch {per_level}")
    print_ratio("served/in-process c16", served[16][0] / raw, 0.95)
    print_ratio("served/in-process c4", served[4][0] / raw, 0.85)
    print_ratio("radflow c4 / naive c4", served[4][0] / naive_rate, 3.0)
    print_ratio("p99 ms at c4", _pct(served[4][1], 99), 1000.0, higher_is_better=False)


if __name__ == "__main__":
    main()
