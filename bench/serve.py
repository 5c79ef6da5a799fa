"""Serving speed: ``radflow serve`` and LitServe on the same ONNX model, side by side, against the in-process pipeline.

For each model — small_cnn at 256 px (the default workspace model) and densenet121 at 224 px, random
weights (speed does not depend on them) exported with ``radflow.export`` — one run measures:

1. in process: radflow's decode (PIL) + resize + ONNX Runtime, one image at a time (the latency a lone
   request cannot beat) and in batches of 8 (the raw rate), with the process CPU time per image;
   measured before and after the servers and averaged, since a shared machine's speed drifts;
2. ``radflow serve`` as a new user starts it (uvicorn subprocess, default settings, auth off: every
   prediction logged with its input stored) and LitServe 0.2.19 serving the same ONNX file with the
   same decode and preprocessing (``bench/_litserve_app.py``: batch 8, 10 ms timeout), both up at once
   and driven in turn, level by level, so drift in the machine's speed hits both alike (the one not
   measured is paused with SIGSTOP: LitServe's idle polling takes about a quarter of a core);
3. by ``wrk`` (``bench/_wrk.lua``: prebuilt multipart bodies of 512 px PNGs, so the client is not the
   bottleneck) and by a Python httpx client posting the same bodies, at 1, 4 and 16 connections: after a
   warm-up, p50/p99 latency, throughput, and the server's CPU time per request (user + system time of
   its process tree from idle before the window to idle after it, divided by the requests sent in it).

Goals (issue 13), printed as ratio lines from the wrk rows (the httpx rows where wrk is unavailable):
lone request (c1) p50 <= in-process one-image p50 + 3 ms; c16 throughput >= 1.2x LitServe's and
>= 0.90 (small_cnn) / 0.95 (densenet121) of the in-process batched rate; server CPU per request at c16
minus the in-process CPU per image (batched) <= 1 ms.

    .venv/bin/python bench/serve.py [--quick] [--seconds 10] [--models small_cnn:256 densenet121:224]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.debian installs wrk as tests install packages

from tests.debian import ensure_debian_package

from _table import print_ratio, print_table

BENCH = Path(__file__).resolve().parent

LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
LEVELS = (1, 4, 16)
BOUNDARY = "radflow-bench-5f0c2a9e"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
IN_PROCESS_GOAL = {"small_cnn": 0.90, "densenet121": 0.95}
"""c16 throughput as a share of the in-process batched rate; a heavier model leaves less room for overhead."""
RADFLOW, LITSERVE = "radflow serve", "LitServe 0.2.19"


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


def _multipart(png: bytes) -> bytes:
    """The body ``curl -F file=@chest.png`` sends."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="chest.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    return head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def _export(arch: str, size: int, tmp: Path) -> Path:
    import torch

    from radflow.data.preprocess import PreprocessSpec
    from radflow.export.onnx import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, len(LABELS)).eval()
    spec = PreprocessSpec(size=size)
    meta = ModelMeta(arch=arch, task="multilabel", labels=LABELS, num_outputs=len(LABELS), preprocess=spec.to_dict())
    return export_onnx(model, meta, tmp / f"{arch}.onnx")


def _pct(latencies_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies_s) * 1000, q)) if len(latencies_s) else float("nan")


# -- in process ------------------------------------------------------------------------------


@dataclass
class InProcess:
    single_s: list[float]
    """Latency of each image run alone: decode + resize + ORT batch 1."""
    single_cpu_ms: float
    batch_rates: list[float]
    """Images/s in batches of 8, one figure per measurement (before and after the servers)."""
    batch_cpu_ms: list[float]

    @property
    def batch_rate(self) -> float:
        return float(np.mean(self.batch_rates))

    @property
    def batch_cpu(self) -> float:
        return float(np.mean(self.batch_cpu_ms))

    def merge(self, other: InProcess) -> InProcess:
        return InProcess(
            self.single_s + other.single_s,
            (self.single_cpu_ms * len(self.single_s) + other.single_cpu_ms * len(other.single_s))
            / (len(self.single_s) + len(other.single_s)),
            self.batch_rates + other.batch_rates,
            self.batch_cpu_ms + other.batch_cpu_ms,
        )


def _in_process(onnx: Path, images: list[bytes], seconds: float, batch: int = 8) -> InProcess:
    """The pipeline without a server, ``seconds`` each for one image at a time and batches of ``batch``."""
    from radflow.runtime import RadflowModel

    model = RadflowModel.load(onnx)

    def one(data: bytes) -> None:
        model.predict_batch(model.prepare(model.decode(data))[None])

    one(images[0])  # ORT's first run allocates its buffers
    latencies: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or not latencies:
        t0 = time.perf_counter()
        one(images[len(latencies) % len(images)])
        latencies.append(time.perf_counter() - t0)
    single_cpu = 1000 * (time.process_time() - cpu0) / len(latencies)

    done = 0
    cpu0, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or not done:
        chunk = [images[(done + k) % len(images)] for k in range(batch)]
        model.predict_batch(np.stack([model.prepare(model.decode(data)) for data in chunk]))
        done += batch
    elapsed = time.perf_counter() - start
    batch_cpu = 1000 * (time.process_time() - cpu0) / done
    return InProcess(latencies, single_cpu, [done / elapsed], [batch_cpu])


# -- servers -----------------------------------------------------------------------------------


class Server:
    """A server subprocess: started, waited for, metered by its process tree's CPU time, stopped."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        ready_path: str,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.url, self.ready_path, self.log = name, f"http://127.0.0.1:{port}", ready_path, log
        self.answered = 0
        """2xx answers counted by the clients, warm-ups included (checked against the prediction log)."""
        self.idle_share = 0.0
        """CPU use with no requests, as a share of one core (set by :func:`_idle_cpu`)."""
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.process = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready in {timeout:g} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def tree(self) -> list[psutil.Process]:
        return [self.process, *self.process.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and every process it started (LitServe runs several)."""
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def pause(self, paused: bool) -> None:
        """SIGSTOP (or SIGCONT) the process tree: an idle server's own polling then takes no CPU from the other."""
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend() if paused else proc.resume()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        tree = self.tree()
        self.proc.terminate()  # radflow: stop accepting, answer what is in flight, flush the log
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for proc in tree[1:]:  # workers a graceful stop left behind
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def _radflow(onnx: Path, tmp: Path) -> Server:
    port = _free_port()
    cmd = [sys.executable, "-c", "from radflow.cli import main; main()", "serve", "--model", str(onnx), "--no-auth"]
    cmd += ["--port", str(port), "--store-url", f"sqlite:///{tmp / 'serving.db'}", "--log-level", "warning"]
    env = {**os.environ, "RADFLOW_AUTH": "off"}
    return Server(RADFLOW, cmd, port, "/v2/health/ready", tmp / "radflow.log", env)


def _litserve(onnx: Path, tmp: Path, batch_timeout_ms: float) -> Server:
    port = _free_port()
    cmd = [sys.executable, str(BENCH / "_litserve_app.py"), "--model", str(onnx), "--port", str(port)]
    cmd += ["--max-batch-size", "8", "--batch-timeout-ms", f"{batch_timeout_ms:g}"]
    # SIGTERM ends LitServe's main process only; Server.stop ends the workers it leaves
    return Server(LITSERVE, cmd, port, "/health", tmp / "litserve.log")


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    answered: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    abandoned: int = 0
    """Requests in flight when the client stopped: the server still works them (wrk: one per connection)."""
    cpu_s: float = 0.0
    """The server's CPU time from idle before the measured window to idle after it."""

    @property
    def rate(self) -> float:
        return self.answered / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / max(1, self.answered + self.errors + self.abandoned)


def _wrk(url: str, bodies: Path, count: int, concurrency: int, seconds: float) -> Load:
    """One wrk thread (it is not the bottleneck at 16 connections and leaves the cores to the server)."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s"]
    cmd += ["-s", str(BENCH / "_wrk.lua"), url, "--", str(bodies), str(count), CONTENT_TYPE]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("wrk-result ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line: {out[-1000:]}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    answered, errors = int(f["requests"] - f["status_errors"]), int(f["status_errors"] + f["socket_errors"])
    return Load(answered, errors, f["duration_us"] / 1e6, f["p50_us"] / 1e3, f["p99_us"] / 1e3, concurrency)


async def _httpx_load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> Load:
    """``concurrency`` httpx clients in one event loop, each posting the next body as soon as it has an answer."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": CONTENT_TYPE}
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                answer = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += concurrency

        start = time.perf_counter()
        end = start + seconds
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Load(len(latencies), errors, elapsed, _pct(latencies, 50), _pct(latencies, 99))


def _idle_cpu_seconds(server: Server, timeout: float = 60) -> float:
    """The server's CPU seconds once it has finished what it was sent (back to its idle draw, +2% of a core)."""
    deadline = time.monotonic() + timeout
    step = 0.25
    now = server.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(step)
        now, before = server.cpu_seconds(), now
        if now - before < step * (server.idle_share + 0.02):
            break
    return now


def _measure(server: Server, drive: Callable[[float], Load], seconds: float, warmup: float) -> Load:
    """A warm-up (uncounted, so batching and connections settle), then ``seconds`` metered.

    CPU is read with the server idle on both sides, so the window holds the work of exactly the
    requests sent in it: the warm-up's last requests are done before, the abandoned ones counted.
    """
    server.answered += drive(warmup).answered
    before = _idle_cpu_seconds(server)
    load = drive(seconds)
    load.cpu_s = _idle_cpu_seconds(server) - before
    server.answered += load.answered
    return load


def _idle_cpu(servers: Sequence[Server], seconds: float = 2.0) -> dict[str, float]:
    """Each server's CPU use (share of one core) with no requests: what it takes from the other while idle."""
    before = {s.name: s.cpu_seconds() for s in servers}
    time.sleep(seconds)
    for s in servers:
        s.idle_share = (s.cpu_seconds() - before[s.name]) / seconds
    return {s.name: s.idle_share for s in servers}


# -- one model -----------------------------------------------------------------------------------


@dataclass
class ModelRun:
    arch: str
    size: int
    inproc: InProcess
    loads: dict[tuple[str, str, int], Load] = field(default_factory=dict)
    """(server, client, concurrency) -> measured load."""
    idle: dict[str, float] = field(default_factory=dict)
    logged: int = 0
    answered: int = 0


def _logged(db: Path) -> int:
    from radflow.store import Store

    store = Store(f"sqlite:///{db}")
    try:
        return len(store.predictions(limit=10**8))
    finally:
        store.close()


def _run_model(arch: str, size: int, args: argparse.Namespace, clients: list[str], tmp: Path) -> ModelRun:
    images = _images(32)
    bodies = [_multipart(png) for png in images]
    body_dir = tmp / "bodies"
    body_dir.mkdir()
    for k, body in enumerate(bodies):
        (body_dir / f"{k}.bin").write_bytes(body)
    onnx = _export(arch, size, tmp)
    inproc = _in_process(onnx, images, args.in_process_seconds)

    servers = [_radflow(onnx, tmp), _litserve(onnx, tmp, args.litserve_batch_timeout_ms)]
    run = ModelRun(arch, size, inproc)
    try:
        for server in servers:
            server.wait_ready()
        run.idle = _idle_cpu(servers)
        for client in clients:
            for concurrency in LEVELS:
                for server in servers:
                    for other in servers:
                        other.pause(other is not server)
                    path = "/v1/predict" if server.name == RADFLOW else "/predict"
                    url = server.url + path

                    def drive(seconds: float, url: str = url, c: int = concurrency, client: str = client) -> Load:
                        if client == "wrk":
                            return _wrk(url, body_dir, len(bodies), c, seconds)
                        return asyncio.run(_httpx_load(url, bodies, c, seconds))

                    run.loads[server.name, client, concurrency] = _measure(server, drive, args.seconds, args.warmup)
    finally:
        for server in servers:
            server.pause(False)
            server.stop()
            if any(load.errors for (name, _, _), load in run.loads.items() if name == server.name):
                print(f"{server.name} answered errors; the end of its log:\n{server.log_tail()}")
    run.answered = servers[0].answered
    run.logged = _logged(tmp / "serving.db")
    run.inproc = inproc.merge(_in_process(onnx, images, args.in_process_seconds))
    return run


# -- report --------------------------------------------------------------------------------------


def _rows(run: ModelRun, clients: list[str]) -> list[list[object]]:
    ip = run.inproc
    model = f"{run.arch} {run.size}"
    single_rate = len(ip.single_s) / sum(ip.single_s)
    before_after = " / ".join(f"{r:.1f}" for r in ip.batch_rates)
    single = [single_rate, _pct(ip.single_s, 50), _pct(ip.single_s, 99), ip.single_cpu_ms, 0]
    rows: list[list[object]] = [
        [model, "in-process, one image at a time", "-", 1, *single],
        [model, "in-process, batches of 8 (mean)", "-", "-", ip.batch_rate, "-", "-", ip.batch_cpu, 0],
        [model, "  before / after the servers", "-", "-", before_after, "-", "-", "-", "-"],
    ]
    for client in clients:
        for concurrency in LEVELS:
            for server in (RADFLOW, LITSERVE):
                load = run.loads[server, client, concurrency]
                rows.append(
                    [model, server, client, concurrency, load.rate, load.p50_ms, load.p99_ms, load.cpu_ms, load.errors]
                )
    return rows


def _ratios(run: ModelRun, clients: list[str]) -> None:
    ip = run.inproc
    client = clients[0]  # wrk where it ran: the goals are read from the load generator that is not the bottleneck

    def load(server: str, concurrency: int, by: str = client) -> Load:
        return run.loads[server, by, concurrency]

    def share(a: float, b: float) -> float:
        return a / b if b else float("nan")

    single_p50 = _pct(ip.single_s, 50)
    name = f"{run.arch} c1 p50 ms ({client}) vs in-process one image {single_p50:.1f} ms + 3"
    print_ratio(f"{name}, radflow", load(RADFLOW, 1).p50_ms, round(single_p50 + 3, 2), higher_is_better=False)
    print_ratio(f"{name}, LitServe", load(LITSERVE, 1).p50_ms)
    for by in clients:
        for concurrency in LEVELS:
            goal = 1.2 if concurrency == 16 and by == client else None
            ratio = share(load(RADFLOW, concurrency, by).rate, load(LITSERVE, concurrency, by).rate)
            print_ratio(f"{run.arch} c{concurrency} throughput radflow/LitServe ({by})", ratio, goal)
    goal = IN_PROCESS_GOAL.get(run.arch, 0.95)
    print_ratio(f"{run.arch} c16 radflow/in-process batched ({client})", load(RADFLOW, 16).rate / ip.batch_rate, goal)
    print_ratio(f"{run.arch} c16 LitServe/in-process batched ({client})", load(LITSERVE, 16).rate / ip.batch_rate)
    name = f"{run.arch} server CPU ms/request at c16 ({client}) - in-process {ip.batch_cpu:.2f} ms/image"
    print_ratio(f"{name}, radflow", load(RADFLOW, 16).cpu_ms - ip.batch_cpu, 1.0, higher_is_better=False)
    print_ratio(f"{name}, LitServe", load(LITSERVE, 16).cpu_ms - ip.batch_cpu)


def _clients(wanted: list[str]) -> list[str]:
    if "wrk" not in wanted:
        return wanted
    try:
        ensure_debian_package("wrk", lambda: shutil.which("wrk") is not None)
    except pytest.skip.Exception as exc:  # the helper tests share skips when a package cannot be had
        print(f"wrk is not available, measuring with httpx only: {exc.msg}")
        return [c for c in wanted if c != "wrk"] or ["httpx"]
    return wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Short run (3 s per level): a smoke test, not figures.")
    parser.add_argument("--seconds", type=float, help="Measured seconds per server, client and level (default 10).")
    parser.add_argument("--models", nargs="+", default=["small_cnn:256", "densenet121:224"], help="ARCH:SIZE ...")
    parser.add_argument("--clients", nargs="+", default=["wrk", "httpx"], choices=["wrk", "httpx"])
    parser.add_argument("--litserve-batch-timeout-ms", type=float, default=10.0)
    args = parser.parse_args()
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup = 1.0 if args.quick else 2.0
    args.in_process_seconds = 1.5 if args.quick else 4.0
    clients = _clients(args.clients)

    runs = []
    for spec in args.models:
        arch, _, size = spec.partition(":")
        with tempfile.TemporaryDirectory() as name:
            runs.append(_run_model(arch, int(size or 224), args, clients, Path(name)))

    print(
        f"512 px PNG uploads (multipart), {os.cpu_count()} CPUs, {args.seconds:g} s per level after "
        f"{args.warmup:g} s warm-up; CPU ms = server process tree (or this process, in-process) per image"
    )
    headers = ["model", "setup", "client", "conc", "img/s", "p50 ms", "p99 ms", "CPU ms/img", "errors"]
    print_table(headers, [row for run in runs for row in _rows(run, clients)])
    for run in runs:
        idle = ", ".join(f"{name} {share:.1%}" for name, share in run.idle.items())
        print(
            f"{run.arch}: radflow predictions logged {run.logged} (answered incl. warm-up {run.answered}); "
            f"idle CPU of one core: {idle}"
        )
    for run in runs:
        _ratios(run, clients)


if __name__ == "__main__":
    main()
