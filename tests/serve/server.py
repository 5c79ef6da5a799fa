"""A real ``radflow serve`` (uvicorn) in a subprocess on a free loopback port, for the e2e serve tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from radflow.serve.server import free_port, wait_ready

__all__ = ["ServerProcess", "free_port", "wait_ready"]


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
