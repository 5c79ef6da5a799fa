"""Serving overhead: the CPU a ``/v1/predict`` request costs beyond the core's decode, inference and log.

The app (``radflow.serve.create_app``, every middleware and dependency a real server runs) is driven
in process by a bare ASGI caller (a scope, one body message, a list for the answer: next to nothing of
a client's cost), and the same images go straight to ``InferenceService.predict``, which is decode +
preprocess + ONNX Runtime + the prediction log and nothing of HTTP. Both run sequentially (c1) and
16 at a time (c16), interleaved round by round so drift in a shared machine's speed hits both alike;
the process CPU time (``time.process_time``: every thread, ORT's included) per request of the app
minus that of the core is what the transport costs. ``--profile`` adds the functions that cost most
on the app path (cProfile over a c16 round), to see where the rest goes.

Small images (128 px PNGs, a 64 px small_cnn) keep decode and inference short, so the difference is
not lost in their noise; the overhead does not depend on the model.

    .venv/bin/python bench/serve_overhead.py [--requests 400] [--rounds 5] [--auth] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import BOUNDARY, _multipart  # the multipart body bench/serve.py sends with wrk

from _table import print_ratio, print_table

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
GOAL_MS = 1.0
"""Issue 13: server CPU per request beyond the in-process per-image CPU, at most 1 ms."""


def _images(n: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _export(size: int, tmp: Path) -> Path:
    import torch

    from radflow.data.preprocess import PreprocessSpec
    from radflow.export.onnx import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", len(LABELS)).eval()
    spec = PreprocessSpec(size=size)
    meta = ModelMeta(
        arch="small_cnn", task="multilabel", labels=LABELS, num_outputs=len(LABELS), preprocess=spec.to_dict()
    )
    return export_onnx(model, meta, tmp / "small_cnn.onnx")


def _asgi_call(app: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> Callable[[], Awaitable[int]]:
    """One ``POST /v1/predict`` through the ASGI app, as uvicorn hands it over; returns the status."""
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"host", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def call() -> int:
        status = [0]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]

        await app({**scope_base, "state": {}}, receive, send)
        return status[0]

    return call


async def _round(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int) -> float:
    """Process CPU seconds of running every call, ``concurrency`` at a time."""
    start = time.process_time()
    for i in range(0, len(calls), concurrency):
        await asyncio.gather(*(c() for c in calls[i : i + concurrency]))
    return time.process_time() - start


async def _bench(args: argparse.Namespace, tmp: Path) -> None:
    from radflow.inference import ServeSettings
    from radflow.serve import create_app

    onnx = _export(args.size, tmp)
    settings = ServeSettings(
        model=str(onnx),
        store_url=f"sqlite:///{tmp / 'serving.db'}",
        auth="tokens" if args.auth else "off",
        drift_interval_s=3600,
    )
    app = create_app(settings)
    images = _images(16, args.side)
    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    async with app.router.lifespan_context(app):
        service = app.state.service
        if args.auth:
            from radflow.auth import create_token

            token, _ = create_token(service.require_store(), "bench", "client")
            headers.append((b"authorization", f"Bearer {token}".encode()))
        via_app = [_asgi_call(app, _multipart(images[i % len(images)]), headers) for i in range(args.requests)]
        via_core: list[Callable[[], Awaitable[Any]]] = [
            functools.partial(service.predict, images[i % len(images)]) for i in range(args.requests)
        ]
        assert await via_app[0]() == 200, "the app did not answer 200"
        for c in (1, 16):  # warm-up: ORT arenas, the store's first commits
            await _round(via_app[:64], c)
            await _round(via_core[:64], c)
        cpu: dict[tuple[str, int], list[float]] = {}
        for _ in range(0 if args.transport_only else args.rounds):
            for c in (1, 16):
                for name, calls in (("app", via_app), ("core", via_core)):
                    cpu.setdefault((name, c), []).append(await _round(calls, c) / len(calls) * 1000)
        rows, overhead = [], {}
        for c in () if args.transport_only else (1, 16):
            app_ms, core_ms = statistics.median(cpu[("app", c)]), statistics.median(cpu[("core", c)])
            overhead[c] = app_ms - core_ms
            diffs = [a - b for a, b in zip(cpu[("app", c)], cpu[("core", c)], strict=True)]
            rows.append([f"c{c}", core_ms, app_ms, overhead[c] * 1000, min(diffs) * 1000, max(diffs) * 1000])
        # The transport alone: the core answers at once with an answer it gave before, so nothing but
        # HTTP parsing, middleware, dependencies, multipart and encoding is left to measure (no ORT noise).
        answer = await service.predict(images[0], None, None)

        async def answered(_data: bytes, _key: str | None = None, _sex: str | None = None) -> dict[str, Any]:
            return answer

        service.predict = answered
        transport = {  # the least of the rounds: interference from other processes only ever adds
            c: min([await _round(via_app, c) / len(via_app) * 1e6 for _ in range(args.rounds)]) for c in (1, 16)
        }
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            await _round(via_app, 16)
            profile.disable()
    auth = "tokens (cached identity)" if args.auth else "off"
    print(
        f"/v1/predict CPU per request, {args.requests} requests x {args.rounds} rounds, {args.side} px PNG, auth {auth}"
    )
    if rows:
        print_table(["load", "core ms/req", "app ms/req", "overhead µs", "min µs", "max µs"], rows)
    print_table(["load", "transport alone µs/req (least of rounds)"], [[f"c{c}", v] for c, v in transport.items()])
    for c, value in overhead.items():
        print_ratio(f"c{c} app minus core CPU per request, ms", value, GOAL_MS, higher_is_better=False)
    for c, value in transport.items():
        print_ratio(f"c{c} transport alone CPU per request, ms", value / 1000, GOAL_MS, higher_is_better=False)
    if args.profile:
        print("\ntransport alone at c16, by own time (cProfile; its own cost inflates every figure):")
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile_lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--side", type=int, default=128, help="side of the PNG uploads, px")
    parser.add_argument("--size", type=int, default=64, help="model input size, px")
    parser.add_argument("--auth", action="store_true", help="tokens on, one client token (cached after first use)")
    parser.add_argument("--transport-only", action="store_true", help="only the transport alone (quick)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-lines", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
