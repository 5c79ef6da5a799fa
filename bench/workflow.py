"""Served workflow speed: ``radflow serve`` answering ``/v1/workflows/{name}/predict`` against its steps in process.

The built-in chest workflow of tests/workflow (detect with a registered fcos_small at 32 px -> crop every
box with a 10 % margin -> the multi-label small_cnn on each crop, batched -> max over crops), on chest
phantoms (``radflow synth chest --boxes``, 256 px wide), models registered in a throwaway workspace's
MLflow and resolved by alias (random weights: speed does not depend on them; the detector's class
bias is set so it answers about twenty boxes an image, each one a crop the classifier scores).

1. in process: :func:`radflow.workflow.run_workflow` on each phantom in turn, one at a time; the
   per-step latency it reports (decode included) summed is the time an image costs in process, its
   inverse the in-process img/s; measured before and after the server and averaged;
2. ``radflow serve --workspace`` (uvicorn subprocess, auth off) driven by wrk (``bench/_wrk.lua``; the
   httpx client of bench/serve.py where wrk is missing, which takes CPU from the server on a small
   machine) posting multipart PNGs at 1, 2, 4 and 8 connections, after a warm-up (the first call loads
   the workflow); the per-step latency the served answers carry is sampled after the load. Two setups:
   one process over the default SQLite log, and ``--workers 2`` over a PostgreSQL log (Debian's, as
   tests/postgres.py runs it; ``--no-workers`` skips it). One process is bound by the GIL, not the
   cores: most of a workflow answer is Python (decode, NMS, a crop's preprocessing and answer, a logged
   row per crop), so a second request in flight gains little; two processes each have their own.

Goal (issue 15): the best served img/s >= 0.85 of the in-process sum of the steps.

    .venv/bin/python bench/workflow.py [--seconds 10] [--size 256]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.workflow.models: the workspace

from serve import CONTENT_TYPE, Load, Server, _clients, _free_port, _httpx_load, _measure, _multipart, _wrk

from _table import print_ratio, print_table

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
LEVELS = (1, 2, 4, 8)
GOAL = 0.85
NAME = "findings"


def _in_process(
    ws_root: Path, tracking_uri: str, images: list[bytes], seconds: float, threads: int | None
) -> dict[str, float]:
    """Mean ms per step (and decode), their sum, and the boxes per image, running one image at a time."""
    from radflow.config import load_params
    from radflow.workflow import load_workflow, run_workflow

    config = load_params(ws_root / "params.yaml").workflows[NAME]
    workflow = load_workflow(NAME, config, tracking_uri=tracking_uri, threads=threads)
    for data in images:
        run_workflow(workflow, data)  # warm
    per_step: dict[str, list[float]] = {"decode": []}
    boxes: list[int] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        answer = run_workflow(workflow, images[i % len(images)])
        per_step["decode"].append(answer["latency_ms"]["decode"])
        for step in answer["steps"]:
            per_step.setdefault(step["name"], []).append(step["latency_ms"])
        boxes.append(answer["steps"][1]["output"]["count"])
        i += 1
    out = {name: mean(values) for name, values in per_step.items()}
    out["sum"] = sum(out.values())
    out["boxes"] = mean(boxes)
    return out


def _served_steps(url: str, bodies: list[bytes], n: int = 30) -> dict[str, float]:
    """Mean per-step ms the served answers report, one request at a time."""
    per_step: dict[str, list[float]] = {"decode": []}
    with httpx.Client(timeout=60) as client:
        for i in range(n):
            answer = client.post(url, content=bodies[i % len(bodies)], headers={"content-type": CONTENT_TYPE}).json()
            per_step["decode"].append(answer["latency_ms"]["decode"])
            for step in answer["steps"]:
                per_step.setdefault(step["name"], []).append(step["latency_ms"])
    return {name: mean(values) for name, values in per_step.items()}


def _serve(ws_root: Path, tmp: Path, workers: int, store_url: str | None) -> Server:
    port = _free_port()
    cmd = [sys.executable, "-c", "from radflow.cli import main; main()", "serve", "--workspace", str(ws_root)]
    cmd += ["--no-auth", "--port", str(port), "--log-level", "warning", "--workers", str(workers)]
    if store_url is not None:
        cmd += ["--store-url", store_url]
    log = tmp / f"radflow-{workers}.log"
    return Server(f"radflow serve --workers {workers}", cmd, port, "/v2/health/ready", log, {**os.environ})


def _drive(server: Server, bodies: list[bytes], body_dir: Path, client: str, seconds: float) -> dict[int, Load]:
    url = f"{server.url}/v1/workflows/{NAME}/predict"
    httpx.post(url, content=bodies[0], headers={"content-type": CONTENT_TYPE}, timeout=120).raise_for_status()
    loads: dict[int, Load] = {}
    for level in LEVELS:

        def drive(s: float, level: int = level) -> Load:
            if client == "wrk":
                return _wrk(url, body_dir, len(bodies), level, s)
            return asyncio.run(_httpx_load(url, bodies, level, s))

        loads[level] = _measure(server, drive, seconds, warmup=2.0)
    return loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured seconds per level (and in process).")
    parser.add_argument("--size", type=int, default=256, help="Phantom width in pixels (height is 1.2x).")
    parser.add_argument("--clients", nargs="+", default=["wrk", "httpx"], choices=["wrk", "httpx"])
    parser.add_argument(
        "--no-workers", action="store_true", help="Skip the 2-process setup (it needs Debian's PostgreSQL)."
    )
    parser.add_argument(
        "--threads", type=int, help="ONNX Runtime threads of each model, served and in process (default: all cores)."
    )
    args = parser.parse_args()
    client = _clients(args.clients)[0]
    from tests.workflow.models import findings_workflow, make_workspace

    setups: dict[str, dict[int, Load]] = {}
    with tempfile.TemporaryDirectory() as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        ws = make_workspace(tmp / "ws", {NAME: findings_workflow()}, size=args.size, threads=args.threads)
        images = [p.read_bytes() for p in ws.phantoms]
        before = _in_process(ws.root, ws.tracking_uri, images, args.seconds, args.threads)
        bodies = [_multipart(png) for png in images]
        body_dir = tmp / "bodies"
        body_dir.mkdir()
        for i, body in enumerate(bodies):
            (body_dir / f"{i}.bin").write_bytes(body)
        runs: list[tuple[str, int, str | None]] = [("1 process, SQLite log", 1, None)]
        if not args.no_workers:
            from serve_replicas import _database

            from tests.postgres import postgres_server

            pg_url = stack.enter_context(contextlib.contextmanager(postgres_server)())
            runs.append(("2 processes, PostgreSQL log", 2, _database(pg_url, "workflow_bench")))
        served_steps: dict[str, float] = {}
        for label, workers, store_url in runs:
            server = _serve(ws.root, tmp, workers, store_url)
            try:
                server.wait_ready()
                setups[label] = _drive(server, bodies, body_dir, client, args.seconds)
                if workers == 1:
                    served_steps = _served_steps(f"{server.url}/v1/workflows/{NAME}/predict", bodies)
            finally:
                server.stop()
        after = _in_process(ws.root, ws.tracking_uri, images, args.seconds, args.threads)
    in_ms = (before["sum"] + after["sum"]) / 2
    in_rate = 1000 / in_ms
    boxes = (before["boxes"] + after["boxes"]) / 2
    print(
        f"workflow detect (fcos_small 32 px) -> crop -> classify (small_cnn 32 px, per crop) -> max, "
        f"{args.size} px phantoms, {boxes:.1f} boxes/image, {os.cpu_count()} CPUs, {args.seconds:g} s per setup, "
        f"client {client}; every step answer logged (a row per crop); "
        "in process = mean of a run before and after the servers"
    )
    rows: list[list[object]] = [["in process (sum of steps)", "-", in_rate, in_ms, "-", "-", 0]]
    for label, loads in setups.items():
        for level, load in loads.items():
            rows.append([label, level, load.rate, load.p50_ms, load.p99_ms, load.cpu_ms, load.errors])
    print_table(["radflow serve", "conc", "img/s", "p50 ms", "p99 ms", "CPU ms/req", "errors"], rows)
    print()
    steps = [k for k in before if k not in ("sum", "boxes")]
    print_table(
        ["step", "in process ms", "served ms (c1)"],
        [[s, (before[s] + after[s]) / 2, served_steps.get(s, float("nan"))] for s in steps],
    )
    best = max(load.rate for loads in setups.values() for load in loads.values())
    print_ratio("served img/s (best setup and level) / in-process sum of steps", best / in_rate, GOAL)
    for label, loads in setups.items():
        top = max(loads.values(), key=lambda load: load.rate)
        print_ratio(f"served img/s, {label} (best level) / in-process sum of steps", top.rate / in_rate)
    print_ratio(
        "served img/s (1 process, c1) / in-process sum of steps", setups["1 process, SQLite log"][1].rate / in_rate
    )


if __name__ == "__main__":
    main()
