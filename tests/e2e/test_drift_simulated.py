"""A simulated clinic against a real ``radflow serve``: drift stays low on held-out traffic, alerts on injected drift.

The model is exported with a reference profile of its own dataset (train and val splits); the
simulator sends that dataset's unprofiled test split, first as it is, then brightened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.store import Store
from tests.serve.harness import metric_value
from tests.serve.models import make_onnx
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.e2e

WINDOW = 300


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path, Path]]:
    root = tmp_path_factory.mktemp("drift-e2e")
    model = make_onnx(root / "m", seed=5, n=1500)
    dataset = next(model.parent.glob("ds-*"))
    env = {
        "RADFLOW_DRIFT_WINDOW": str(WINDOW),
        "RADFLOW_DRIFT_MIN_WINDOW": str(WINDOW),
        "RADFLOW_DRIFT_INTERVAL_S": "0.5",
        "RADFLOW_STORE_INPUTS": "false",
    }
    args = ["--model", str(model), "--store-url", f"sqlite:///{root / 'serving.db'}", "--log-level", "warning"]
    server = ServerProcess(args, env=env, log=root / "server.log").start()
    try:
        yield server, dataset, root
    finally:
        server.kill()


def _simulate(url: str, dataset: Path, *extra: str) -> dict[str, Any]:
    # the test split explicitly: the clinic's new phantoms (the default) are not this model's distribution
    args = ["simulate", url, "--data", str(dataset), "--split", "test", "--rate", "80", "--duration", "5", "--json"]
    args += extra
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["failed"] == {} and summary["answered"] >= WINDOW, summary
    return summary


def _monitoring(url: str) -> dict[str, Any]:
    # the background task scores every 0.5 s; a GET scores too, so the answer is current
    answer = httpx.get(f"{url}/v1/monitoring", timeout=30)
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


def _model_report(report: dict[str, Any]) -> dict[str, Any]:
    (model,) = report["drift"]["models"].values()
    return dict(model)


def test_held_out_traffic_stays_below_every_threshold(clinic: tuple[ServerProcess, Path, Path]) -> None:
    server, dataset, _ = clinic
    _simulate(server.url, dataset, "--seed", "1")
    model = _model_report(_monitoring(server.url))
    assert model["status"] == "ok", [s for s in model["scores"] if s["alert"]]
    assert model["window"]["size"] == WINDOW
    assert model["scores"] and not any(s["alert"] for s in model["scores"]), model["scores"]
    assert _monitoring(server.url)["alerts"] == []


def test_injected_brightness_drift_raises_the_scores_and_records_an_alert(
    clinic: tuple[ServerProcess, Path, Path],
) -> None:
    server, dataset, root = clinic
    _simulate(server.url, dataset, "--seed", "2", "--drift", "brightness=0.3")
    deadline = time.monotonic() + 10
    report = _monitoring(server.url)
    while not report["alerts"] and time.monotonic() < deadline:
        time.sleep(0.5)
        report = _monitoring(server.url)
    model = _model_report(report)
    assert model["status"] == "alert", model
    intensity = next(s for s in model["scores"] if s["feature"] == "intensity_mean" and s["statistic"] == "psi")
    assert intensity["alert"] and intensity["score"] > intensity["threshold"]
    assert {a["kind"] for a in report["alerts"]} == {"drift"}
    # The shift is one event, durable in the store, raised by what crossed first, intensity among it (the
    # background scoring may see the window before every feature crossed; later crossings of the same event
    # show in the report and the gauges, not as new alerts).
    store = Store(f"sqlite:///{root / 'serving.db'}")
    try:
        events = [a for a in store.alerts() if a["kind"] == "drift"]
        assert len(events) == 1, events
        raised_by = set(events[0]["details"]["features"])
        assert any(f.startswith("intensity_") for f in raised_by), raised_by  # a brightness shift moves them
    finally:
        store.close()
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    labels = {"feature": "intensity_mean", "statistic": "psi"}
    assert metric_value(metrics, "radflow_drift_score", **labels) > 0.2
    crossing = events[0]["details"]["crossings"][0]
    counted = {"feature": crossing["feature"], "statistic": crossing["statistic"]}
    assert metric_value(metrics, "radflow_alerts_total", kind="drift", **counted) >= 1
