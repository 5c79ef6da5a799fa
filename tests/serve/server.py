"""A real ``radflow serve`` (uvicorn) in a subprocess on a free loopback port, for the e2e serve tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll ``/v2/health/ready`` until it answers 200 (True), ``timeout`` passes or ``alive()`` turns False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


class ServerProcess:
    """``radflow serve ARGS`` on 127.0.0.1; :meth:`start` waits until /v2/health/ready answers 200."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        cmd = [
            sys.executable,
            "-c",
            "from radflow.cli import main; main()",
            "serve",
            *self.args,
            "--port",
            str(self.port),
        ]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        if wait_ready(self.url, timeout, alive=lambda: proc.poll() is None):
            return self
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {self._log_tail()}")
        self.kill()
        raise RuntimeError(f"server not ready in {timeout} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log and self.log.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
