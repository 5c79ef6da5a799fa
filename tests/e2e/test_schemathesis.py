"""A Schemathesis run against the real server's ``/openapi.json``: no server errors, no undocumented status.

The server is ``radflow serve`` (uvicorn) with a tiny real ONNX model; Schemathesis generates
requests for every operation from the schema (coverage, fuzzing and stateful phases, both valid
and invalid data) and checks each answer: no 5xx, every status and content type documented,
bodies matching their schemas, and honest ``OPTIONS``/405 answers with ``Allow``. Bounded: a few
examples per operation, a fixed seed, one worker and a wall-clock limit, so it takes about a
minute on two cores.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.server import ServerProcess

pytestmark = pytest.mark.e2e
pytest.importorskip("schemathesis")

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
]
MAX_EXAMPLES = 8
TIME_LIMIT_S = 240
"""A hard stop for the whole run (it takes ~45 s alone on two cores): a hang fails instead of stalling the suite."""


@pytest.fixture(scope="module")
def server(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("schemathesis-server")
    proc = ServerProcess(
        ["--model", str(onnx_pair[0]), "--store-url", f"sqlite:///{root / 'serving.db'}", "--log-level", "warning"],
        env={"RADFLOW_AUTH": "off", "RADFLOW_DRIFT_INTERVAL_S": "3600"},
        log=root / "server.log",
    ).start()
    yield proc
    proc.kill()


def _schemathesis(url: str, cwd: Path, config: str) -> subprocess.CompletedProcess[str]:
    (cwd / "schemathesis.toml").write_text(config)
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(cwd / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--workers",
        "1",  # Hypothesis' source inspection is not thread-safe: parallel workers can error spuriously
        "--no-shrink",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
    ]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIME_LIMIT_S, check=False)


def test_every_answer_is_documented_and_no_request_is_a_server_error(server: ServerProcess, tmp_path: Path) -> None:
    # The served model's name and version, so valid requests reach real models (random names only 404).
    config = '[parameters]\n"path.name" = "multilabel-0"\n"path.model_version" = "1"\n'
    run = _schemathesis(server.url, tmp_path, config)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None and counts[1] == counts[2] and int(counts[1]) > 200, output[-3000:]
    server_log = server.log.read_text() if server.log else ""
    assert "internal error answering" not in server_log, server_log[-4000:]
