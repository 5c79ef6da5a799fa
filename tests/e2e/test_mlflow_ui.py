"""`radflow ui`'s MLflow server: it starts on a workspace store and answers its health check."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from radflow.serve.server import free_port
from radflow.tracking import check_tracking, server_command


@pytest.mark.slow
def test_ui_server_starts_and_answers(tmp_path: Path) -> None:
    port = free_port()
    command = server_command(f"sqlite:///{tmp_path / 'mlflow.db'}", port=port)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer within 60 s"
                time.sleep(0.5)
        check_tracking(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
