"""The README's curl examples, run with the real curl binary, exactly as written, against a running server.

curl's ``--data-binary`` sends ``Content-Type: application/x-www-form-urlencoded`` unless told otherwise; /v1/predict
sniffs the bytes, so a raw PNG or DICOM body works as the README shows. The commands are read from README.md (the
ones that call /v1/predict without a token), plus the raw DICOM line until the README carries it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from radflow.data.dicom import write_dicom
from tests.debian import ensure_debian_package
from tests.serve.models import png_bytes
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"
README_DICOM = f"curl --data-binary @study.dcm {README_URL}/v1/predict"
"""The raw DICOM example (README's serving block)."""


def readme_commands() -> list[str]:
    """README's curl lines calling /v1/predict without a token (comments cut), and the raw DICOM line."""
    lines = [line.split(" #")[0].strip() for line in README.read_text().splitlines()]
    found = [line for line in lines if line.startswith("curl ") and "/v1/predict" in line]
    found = [line for line in found if "Authorization" not in line]
    return found if README_DICOM in found else [*found, README_DICOM]


@pytest.fixture(scope="module")
def server(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    ensure_debian_package("curl", lambda: shutil.which("curl") is not None)
    root = tmp_path_factory.mktemp("curl-server")
    store = f"sqlite:///{root / 'serving.db'}"
    proc = ServerProcess(
        ["--model", str(onnx_pair[0]), "--store-url", store, "--no-auth", "--log-level", "warning"],
        log=root / "server.log",
    ).start()
    yield proc
    proc.kill()


def test_the_readmes_curl_examples_work_as_written(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "chest.png").write_bytes(png_bytes(3))
    stored = np.random.default_rng(0).integers(200, 3800, (48, 40), dtype=np.uint16)
    write_dicom(tmp_path / "study.dcm", stored, bits_stored=12, window=(2000.0, 3600.0), uid_seed="curl-example")
    commands = readme_commands()
    assert len(commands) >= 3 and README_DICOM in commands, commands
    for command in commands:
        argv = shlex.split(command.replace(README_URL, server.url))
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command}: curl exited {done.returncode}: {done.stderr}"
        answer = json.loads(done.stdout)
        assert "error" not in answer and answer["model"]["version"] == "unregistered", f"{command}: {done.stdout}"
        assert [f["label"] for f in answer["findings"]], f"{command}: {done.stdout}"
    recent = httpx.get(f"{server.url}/v1/ui/recent", params={"limit": len(commands)}).json()["predictions"]
    assert recent[0]["input_format"] == "dicom"  # the DICOM line ran last and was read as DICOM
    assert {p["input_format"] for p in recent[1:]} == {"png"}
