"""Replicated serving: ``radflow serve --workers 2`` against ``--workers 1`` on one port, at 16 connections.

Both serve the same ONNX model (small_cnn at 256 px, the default workspace model, random weights) over one
PostgreSQL prediction log (Debian's, tests/postgres.py; ``--workers 2`` refuses SQLite), every prediction
logged with its input stored, auth off. The load is bench/serve.py's: ``wrk`` posting prebuilt multipart
bodies of 512 px PNGs (a Python httpx client where wrk cannot be installed), a warm-up, then a metered
window with the server tree's CPU time per request. The two setups run in turn, ``--rounds`` times, so drift
in a shared machine's speed hits both alike; the table shows each round, the ratio the best of each.

The ratio (issue 18: 2 processes / 1 process at c16) has no fixed goal: it is bounded by the cores left
once the load generator and PostgreSQL have theirs (on 2 cores, one process already uses ONNX Runtime's
threads on both), and is printed with the CPU count so it can be read for the machine it ran on.

    .venv/bin/python bench/serve_replicas.py [--seconds 10] [--rounds 2] [--clients wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres: PostgreSQL as the tests run it

from serve import (
    Load,
    Server,
    _clients,
    _export,
    _free_port,
    _httpx_load,
    _images,
    _measure,
    _multipart,
    _wrk,
)
from tests.postgres import postgres_server

from _table import print_ratio, print_table

CONCURRENCY = 16
ARCH, SIZE = "small_cnn", 256

__all__ = ["main"]


def _database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def _serve(onnx: Path, store_url: str, workers: int, tmp: Path) -> Server:
    port = _free_port()
    cmd = [sys.executable, "-c", "from radflow.cli import main; main()", "serve", "--model", str(onnx), "--no-auth"]
    cmd += ["--port", str(port), "--store-url", store_url, "--workers", str(workers), "--log-level", "warning"]
    env = {**os.environ, "RADFLOW_AUTH": "off"}
    return Server(
        f"{workers} process{'es' if workers > 1 else ''}", cmd, port, "/v2/health/ready", tmp / f"w{workers}.log", env
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="metered seconds per setup and round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", nargs="+", default=["wrk"], choices=["wrk", "httpx"])
    args = parser.parse_args()
    client = _clients(args.clients)[0]

    with (
        contextlib.contextmanager(postgres_server)() as pg_url,  # stopped and removed at the end
        tempfile.TemporaryDirectory(prefix="radflow-bench-replicas-") as name,
    ):
        tmp = Path(name)
        bodies = [_multipart(png) for png in _images(32)]
        body_dir = tmp / "bodies"
        body_dir.mkdir()
        for k, body in enumerate(bodies):
            (body_dir / f"{k}.bin").write_bytes(body)
        onnx = _export(ARCH, SIZE, tmp)
        loads: dict[int, list[Load]] = {1: [], 2: []}
        for round_ in range(args.rounds):
            for workers in (1, 2):
                store = _database(pg_url, f"replicas_{workers}_{round_}")
                server = _serve(onnx, store, workers, tmp)
                try:
                    server.wait_ready()
                    url = server.url + "/v1/predict"

                    def drive(seconds: float, url: str = url) -> Load:
                        if client == "wrk":
                            return _wrk(url, body_dir, len(bodies), CONCURRENCY, seconds)
                        return asyncio.run(_httpx_load(url, bodies, CONCURRENCY, seconds))

                    loads[workers].append(_measure(server, drive, args.seconds, args.warmup))
                finally:
                    server.stop()
                    if any(load.errors for load in loads[workers]):
                        print(f"{server.name} answered errors; the end of its log:\n{server.log_tail()}")

    print(
        f"{ARCH} {SIZE} px, 512 px PNG uploads (multipart) by {client} at c{CONCURRENCY}, {os.cpu_count()} CPUs, "
        f"{args.seconds:g} s per setup and round after {args.warmup:g} s warm-up, PostgreSQL prediction log"
    )
    headers = ["setup", "round", "img/s", "p50 ms", "p99 ms", "CPU ms/img", "errors"]
    rows: list[list[object]] = []
    for workers, runs in loads.items():
        for k, load in enumerate(runs, 1):
            rows.append([f"--workers {workers}", k, load.rate, load.p50_ms, load.p99_ms, load.cpu_ms, load.errors])
    print_table(headers, rows)
    best = {workers: max(load.rate for load in runs) for workers, runs in loads.items()}
    print_ratio(f"2 processes / 1 process, c{CONCURRENCY} throughput ({os.cpu_count()} CPUs)", best[2] / best[1])


if __name__ == "__main__":
    main()
