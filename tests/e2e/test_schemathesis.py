"""A Schemathesis run against the real server's ``/openapi.json``: no server errors, no undocumented status.

The server is ``radflow serve`` (uvicorn) with a tiny real ONNX model; Schemathesis generates
requests for every operation from the schema (its coverage phase: boundary and invalid values of
every parameter and body, undeclared methods; and fuzzing) and checks each answer: no 5xx, every
status and content type documented, bodies matching their schemas, and honest ``OPTIONS``/405
answers with ``Allow``. One run, with auth on and an operator token (every route is reachable, admin
included, and 401/403 must be documented where they can answer; auth off only removes those).
Bounded: a few fuzzed examples per operation, a fixed seed, one worker and a wall-clock limit.
"""

from __future__ import annotations

import re
import subprocess
import sys
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
MAX_EXAMPLES = 4
"""Fuzzed cases per operation; the coverage phase adds its own (boundary values, every documented type)."""
TIME_LIMIT_S = 240
"""A hard stop for the run (about 30 s alone on two cores): a hang fails instead of stalling the suite."""
CONFIG = '[parameters]\n"path.name" = "multilabel-0"\n"path.model_version" = "1"\n'
"""The served model's name and version, so valid requests reach the real model (random names only 404)."""


def _server(model: Path, root: Path, auth: str) -> ServerProcess:
    env = {
        "RADFLOW_AUTH": auth,
        "RADFLOW_DRIFT_INTERVAL_S": "3600",
        # admin promote/rollback reach a registry: an empty one here, never ./mlflow.db of the checkout
        "RADFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    args = ["--model", str(model), "--store-url", f"sqlite:///{root / 'serving.db'}", "--log-level", "warning"]
    return ServerProcess(args, env=env, log=root / "server.log").start()


def _schemathesis(server: ServerProcess, cwd: Path, phases: str, *extra: str) -> str:
    """Run Schemathesis against ``server``; its output, after checking that every generated case passed."""
    (cwd / "schemathesis.toml").write_text(CONFIG)
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(cwd / "schemathesis.toml"),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        phases,
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
        *extra,
    ]
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIME_LIMIT_S, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None and counts[1] == counts[2] and int(counts[1]) > 200, output[-3000:]
    server_log = server.log.read_text() if server.log else ""
    assert "internal error answering" not in server_log, server_log[-4000:]
    return output


def test_every_answer_is_documented_and_none_is_a_server_error(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """Auth on, as an operator (every route, admin included): 401/403 are documented where they can answer."""
    from radflow.auth import create_token
    from radflow.store import Store

    with Store(f"sqlite:///{tmp_path / 'serving.db'}", create=True) as store:
        token, _ = create_token(store, "schemathesis", "operator")
    server = _server(onnx_pair[0], tmp_path, auth="tokens")
    try:
        _schemathesis(server, tmp_path, "coverage,fuzzing", "--header", f"Authorization: Bearer {token}")
    finally:
        server.kill()
