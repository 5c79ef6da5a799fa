"""The README's workflow curl lines, run with the real curl binary as written, against ``radflow serve --workspace``.

The workspace is tests/workflow's: chest phantoms, a registered detector and classifier, and the README's
``findings`` workflow in its params.yaml. tests/e2e/test_curl_examples.py runs the ``/v1/predict`` lines.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.debian import ensure_debian_package
from tests.serve.server import ServerProcess
from tests.workflow.models import PhantomWorkspace, make_workspace

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"


def _readme_workflows() -> dict[str, object]:
    """The ``workflows:`` block of the README's Workflows section, as a user would paste it into params.yaml."""
    text = README.read_text()
    block = text[text.index("```yaml\nworkflows:") + len("```yaml\n") :]
    return dict(yaml.safe_load(block[: block.index("```")])["workflows"])


def readme_commands() -> list[str]:
    lines = [line.split(" #")[0].strip() for line in README.read_text().splitlines()]
    return [line for line in lines if line.startswith("curl ") and "/v1/workflows" in line]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, PhantomWorkspace]]:
    ensure_debian_package("curl", lambda: shutil.which("curl") is not None)
    ws = make_workspace(tmp_path_factory.mktemp("workflow-curl"), _readme_workflows())
    proc = ServerProcess(["--workspace", str(ws.root), "--no-auth", "--log-level", "warning"], log=ws.root / "log")
    yield proc.start(), ws
    proc.kill()


def test_the_readmes_workflow_curl_lines_work_as_written(
    served: tuple[ServerProcess, PhantomWorkspace], tmp_path: Path
) -> None:
    server, ws = served
    shutil.copy(ws.phantoms[0], tmp_path / "chest.png")
    commands = readme_commands()
    assert len(commands) == 2, commands
    answers = []
    for command in commands:
        argv = shlex.split(command.replace(README_URL, server.url))
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command}: curl exited {done.returncode}: {done.stderr}"
        answer = json.loads(done.stdout)
        assert "error" not in answer, f"{command}: {done.stdout}"
        answers.append(answer)
    listed, predicted = answers
    assert [w["name"] for w in listed["workflows"]] == ["findings"] and listed["workflows"][0]["ready"]
    assert predicted["found"] and [s["name"] for s in predicted["steps"]] == ["detect", "crop", "classify", "findings"]
    assert predicted["answer"]["findings"] and predicted["steps"][0]["model"]["alias"] == "champion"
