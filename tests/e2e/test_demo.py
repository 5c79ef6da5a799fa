"""``radflow demo --no-serve``: a workspace from nothing to a promoted champion, at a tiny size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from radflow.serve.server import free_port
from tests.pipeline.tiny import TinyDemo, tiny_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> TinyDemo:
    return tiny_demo(tmp_path_factory.getbasetemp())


@pytest.mark.slow
def test_demo_runs_the_workspace_pipeline_and_promotes(demo: TinyDemo) -> None:
    assert demo.exit_code == 0, demo.output
    text = " ".join(demo.output.split())
    for stage in ("synth", "ingest", "split", "train", "evaluate", "export", "register"):
        assert f"Running stage '{stage}'" in text
    assert "AUROC" in text  # the evaluation table
    assert "promoted to models:/chest-xray@champion (version 1)" in text
    assert "radflow serve --workspace" in text and "next:" not in text  # --no-serve: says how, serves nothing
    assert demo.registration["name"] == "chest-xray" and demo.registration["passed"] is True
    assert (demo.workdir / "models" / "export" / "model.onnx").stat().st_size > 0
    from radflow.export.onnx import read_metadata

    # The file names its registered model: served alone it is "chest-xray", version "unregistered".
    assert read_metadata(demo.workdir / "models" / "export" / "model.onnx").name == "chest-xray"


_SERVE_SCRIPT = """
import sys
from pathlib import Path
from radflow.demo import serve_demo

def ready(serving):
    print("READY", serving.url, flush=True)

result = serve_demo(Path(sys.argv[1]), port=int(sys.argv[2]), rate=8.0, on_ready=ready)
print("SIMULATION", json.dumps(result.simulation), flush=True)
"""


@pytest.mark.slow
def test_demo_serves_the_champion_to_a_simulated_clinic_until_ctrl_c(demo: TinyDemo, tmp_path: Path) -> None:
    assert demo.exit_code == 0, demo.output
    port = free_port()
    script = "import json\n" + _SERVE_SCRIPT
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(demo.workdir), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and not line.startswith("READY"):
            line = proc.stdout.readline()
        assert line.startswith("READY"), "the demo server never got ready"
        url = line.split()[1]
        assert url == f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/", timeout=10).status_code == 200  # the reader UI
        deadline = time.monotonic() + 60
        feedback = 0
        while time.monotonic() < deadline and feedback == 0:
            summary = httpx.get(url + "/v1/ui/summary", timeout=10).json()
            feedback = sum(m["with_feedback"] for m in summary["feedback"])
            time.sleep(0.5)
        # the simulated clinic's traffic reached the champion and was logged
        assert sum(m["predictions"] for m in summary["feedback"] if m["version"] == "1") > 0, summary
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    simulation = json.loads(out.split("SIMULATION", 1)[1])
    assert simulation["answered"] > 0 and simulation["failed"] == {}  # stopped sending before the server closed
    assert simulation["feedback_posted"] >= feedback > 0  # readers' feedback is on the dashboard
