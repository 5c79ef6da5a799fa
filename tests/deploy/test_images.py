"""deploy/'s images and the commands its files run, checked offline (no image is built here).

The serving image installs radflow ``--no-deps`` over deploy/requirements-serve.txt: that list must be
radflow's own dependencies less the training stack, and ``radflow serve`` must work without what it leaves
out, which a fresh interpreter proves by refusing to import any of it while it serves a prediction.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from radflow.cli import app
from radflow.serve.auth import OPEN_PATHS
from tests.deploy.manifests import load_documents
from tests.serve.models import png_bytes

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
# distribution -> module of what the serving image leaves out (the training stack and the load generator)
LEFT_OUT = {"torch": "torch", "torchvision": "torchvision", "monai": "monai", "ray": "ray", "dvc": "dvc"}
LEFT_OUT |= {"locust": "locust", "pycocotools": "pycocotools"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower()


def _serve_requirements() -> list[str]:
    lines = (DEPLOY / "requirements-serve.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_serving_requirements_are_radflows_own_less_the_training_stack() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {_name(r): r for r in declared}
    serving = {_name(r): r for r in _serve_requirements()}
    assert set(serving) <= set(pinned), sorted(set(serving) - set(pinned))
    for name, requirement in serving.items():  # the same specifiers as pyproject.toml
        assert requirement.replace(" ", "") == pinned[name].replace(" ", ""), name
    assert set(pinned) - set(serving) == set(LEFT_OUT), "a new dependency: add it to one of the two lists"


def test_radflow_serves_a_prediction_without_the_training_stack(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(0))
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {sorted(LEFT_OUT.values())!r}

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("the serving image has no " + name)

        sys.meta_path.insert(0, Refuse())
        from fastapi.testclient import TestClient
        import radflow.cli, radflow.kafka, radflow.cli.worker, radflow.cli.tracking
        from radflow.inference import ServeSettings
        from radflow.serve import create_app

        settings = ServeSettings(model={str(onnx_pair[0])!r}, store_url="sqlite:///{tmp_path}/log.db",
                                 inputs_dir={str(tmp_path / "inputs")!r})
        with TestClient(create_app(settings)) as client:
            assert client.get("/v2/health/ready").status_code == 200
            answer = client.post("/v1/predict", files={{"file": ("x.png", open({str(image)!r}, "rb"), "image/png")}})
            assert answer.status_code == 200, answer.text
        print("served", [m for m in sys.modules if m.split(".")[0] in BLOCKED])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "served []" in done.stdout


def _dockerfile(name: str) -> list[str]:
    text = (DEPLOY / name).read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile.serve", "Dockerfile.train"])
def test_dockerfiles_copy_what_exists_and_run_radflow(name: str) -> None:
    lines = _dockerfile(name)
    assert lines[0].startswith("FROM python:3.11")
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
    assert 'ENTRYPOINT ["radflow"]' in lines
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "MLFLOW_DISABLE_TELEMETRY=true" in env and "DO_NOT_TRACK=1" in env
    if name == "Dockerfile.serve":
        assert any("requirements-serve.txt" in line and "pip install -r" in line for line in lines)
        assert any("pip install --no-deps ." in line for line in lines)
        health = next(line for line in lines if line.startswith("HEALTHCHECK"))
        path = re.search(r"http://127\.0\.0\.1:8000(/[\w/]+)", health)
        assert path and path.group(1) in OPEN_PATHS  # the probe needs no token


def _check_radflow_args(args: list[str], where: str) -> None:
    """``radflow ARGS`` parses with the real CLI: the command and every option exist (``--help``: nothing runs)."""
    result = CliRunner().invoke(app, [*args, "--help"])
    if result.exit_code != 0:
        raise AssertionError(f"{where}: radflow {' '.join(args)}: {result.output.strip()[-300:]}")


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def test_the_commands_deploy_runs_are_valid_radflow_commands() -> None:
    services = _compose()["services"]
    checked = 0
    for name, service in services.items():
        if str(service.get("image", "")).startswith("radflow-"):
            # ${VAR:-default} as compose interpolates it with nothing set
            args = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(a)) for a in service["command"]]
            _check_radflow_args(args, f"docker-compose.yml {name}")
            checked += 1
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for obj in load_documents(path.read_text()):
            spec = obj.get("spec", {})
            pod = spec.get("template", {}).get("spec", spec)
            for container in pod.get("containers", []) or []:
                if "args" in container and str(container.get("image", "radflow")).startswith("radflow"):
                    _check_radflow_args(container["args"], str(path.relative_to(DEPLOY)))
                    checked += 1
    assert checked >= 6
    with pytest.raises(AssertionError, match="No such option"):
        _check_radflow_args(["serve", "--worker", "2"], "a mistyped flag")
