"""deploy/docker-compose.yml validates offline with Debian's ``docker-compose config`` (nothing is started).

The package is installed with apt-get when missing (tests/debian.py); the test is skipped, with the reason,
only where that fails. A mistyped key must fail the check, not be ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.debian import ensure_debian_package

DEPLOY = Path(__file__).parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {"postgres", "mlflow", "serve", "worker", "kafka", "orthanc", "label-studio"}


def _config(path: Path) -> subprocess.CompletedProcess[str]:
    ensure_debian_package("docker-compose", lambda: shutil.which("docker-compose") is not None)
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "RADFLOW_ADMIN_TOKEN")}
    return subprocess.run(
        ["docker-compose", "-f", str(path), "config"], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    done = _config(COMPOSE)
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_the_stack_has_every_service_with_a_health_check(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for port in service.get("ports", []):  # published on loopback only
            published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert str(published).startswith("127.0.0.1:"), (name, port)
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name


def test_radflow_runs_on_the_shared_tracking_server_and_postgresql(config: dict[str, Any]) -> None:
    services = config["services"]
    mlflow = services["mlflow"]
    assert mlflow["command"][0] == "tracking-server"
    assert any(str(arg).startswith("postgresql://radflow:radflow@postgres:5432/mlflow") for arg in mlflow["command"])
    for name in ("serve", "worker"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["RADFLOW_STORE_URL"].startswith("postgresql+psycopg://")
        assert {"postgres", "mlflow"} <= set(services[name]["depends_on"])
    assert services["worker"]["environment"]["RADFLOW_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert (DEPLOY / "compose" / "initdb.sql").read_text().count("CREATE DATABASE mlflow") == 1


def test_a_mistyped_key_fails_the_check(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY / "compose", tmp_path / "compose")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healthchek:", 1))
    done = _config(broken)
    assert done.returncode != 0 and "healthchek" in done.stderr, done.stderr
