"""A real two-node Ray cluster for tests: ``ray start --head`` plus a second ``ray start --address``.

Both nodes are small (one CPU, a small object store, no dashboard) because the test machine is
shared. Every port either node listens on is picked free here, the head's GCS port outside Ray's
worker-port range (10002-19999 by default), so two clusters on one machine never collide. Each node
has its own temp dir; teardown ends only the processes whose command line names one of those dirs
(``ray stop`` would end every Ray process on the machine, other users' clusters included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from radflow.hardware import free_port

__all__ = ["RAY_ENV", "RayCluster", "ray_cluster"]

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
"""The cluster's environment: usage statistics off."""
_WORKER_PORTS = range(10002, 20000)
_OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MiB


@dataclass
class RayCluster:
    """A running cluster: ``address`` (host:port of the head's GCS) and what it took to start."""

    address: str
    nodes: int
    startup_s: float
    temp_dirs: list[Path] = field(default_factory=list)


def _outside_worker_ports() -> int:
    while True:
        port = free_port()
        if port not in _WORKER_PORTS:
            return port


def _ray() -> str:
    return str(Path(sys.executable).parent / "ray")


def _start_node(temp_dir: Path, head_address: str | None, port: int) -> subprocess.Popen[str]:
    ports = {
        "--node-manager-port": _outside_worker_ports(),
        "--object-manager-port": _outside_worker_ports(),
        "--metrics-export-port": _outside_worker_ports(),
        "--dashboard-agent-listen-port": _outside_worker_ports(),
        "--dashboard-agent-grpc-port": _outside_worker_ports(),
        "--runtime-env-agent-port": _outside_worker_ports(),
    }
    command = [
        _ray(),
        "start",
        *(
            ["--head", "--port", str(port), "--include-dashboard=false"]
            if head_address is None
            else ["--address", head_address]
        ),
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(_OBJECT_STORE_BYTES),
        "--disable-usage-stats",
        "--include-log-monitor=false",
        "--temp-dir",
        str(temp_dir),
        *(str(x) for pair in ports.items() for x in pair),
    ]
    env = {**os.environ, **RAY_ENV}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait(proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed ({proc.returncode}): {out[-1500:]}")


def _pids_under(temp_dirs: list[Path]) -> list[int]:
    """Processes whose command line names one of the cluster's temp dirs (its raylets, GCS, agents, workers)."""
    marks = [str(d) for d in temp_dirs]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found.append(int(proc.name))
    return found + _descendants(found)


def _descendants(roots: list[int]) -> list[int]:
    """Children of ``roots``, transitively: Ray workers rename themselves (``ray::MapWorker``), hiding the temp dir."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(proc.name))
    seen: set[int] = set(roots)
    todo = list(roots)
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return sorted(seen - set(roots))


def stop_cluster(temp_dirs: list[Path], grace_s: float = 3.0) -> None:
    """SIGTERM the cluster's own processes (found by temp dir), SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        pids = _pids_under(temp_dirs)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.1)
    for d in temp_dirs:
        shutil.rmtree(d, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except OSError:
        return True


def ray_cluster() -> Iterator[RayCluster]:
    """Start the head and one more node; yield the cluster; stop exactly its processes.

    A driver this process connected (``ray.init``) is shut down first, so it does not outlive the cluster.

    Temp dirs are short and directly under /tmp: Ray's Unix sockets live inside them and a socket
    path may not exceed 107 bytes.
    """
    temp_dirs = [Path(tempfile.mkdtemp(prefix="rfray-", dir="/tmp")) for _ in range(2)]
    port = _outside_worker_ports()
    address = f"127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        # The second node's `ray start` waits for the head's GCS itself, so both start at once.
        procs = [_start_node(temp_dirs[0], None, port), _start_node(temp_dirs[1], address, port)]
        for proc in procs:
            _wait(proc)
    except Exception as exc:
        stop_cluster(temp_dirs)
        pytest.fail(str(exc))
    cluster = RayCluster(address, 2, time.perf_counter() - started, temp_dirs)
    try:
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        stop_cluster(temp_dirs)
