"""The simulator and the load test against a real ``radflow serve`` (uvicorn, ONNX Runtime, SQLite store)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.neardup import NearDuplicateIndex
from radflow.feedback import export_feedback, held_out_summary
from radflow.sim.clinic import build_clinic_pool
from radflow.sim.drift import parse_drift
from radflow.sim.simulator import start_background
from radflow.store import Store, input_path
from tests.fixtures import make_dataset
from tests.serve.models import make_onnx
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.e2e


class Served:
    def __init__(self, server: ServerProcess, root: Path, dataset: Path):
        self.server = server
        self.url = server.url
        self.root = root
        self.dataset = dataset
        self.store_url = f"sqlite:///{root / 'serving.db'}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("sim")
    model = make_onnx(root / "model", seed=0)
    # the same labels as the model's fixture dataset, more held-out images
    dataset = make_dataset(root / "ds", n=60, seed=3)
    args = ["--model", str(model), "--store-url", f"sqlite:///{root / 'serving.db'}", "--log-level", "warning"]
    server = ServerProcess(args, log=root / "server.log").start()
    try:
        yield Served(server, root, dataset)
    finally:
        server.kill()


def _stored(url: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    store = Store(url)
    try:
        return store.predictions(limit=100_000), store.feedback()
    finally:
        store.close()


def test_simulate_sends_the_clinics_new_patients_and_posts_ground_truth_feedback(served: Served) -> None:
    before_predictions, before_feedback = _stored(served.store_url)
    args = ["simulate", served.url, "--data", str(served.dataset), "--rate", "10", "--duration", "3"]
    args += ["--clinic-images", "40"]
    result = CliRunner().invoke(app, [*args, "--feedback-rate", "0.5", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["failed"] == {} and summary["not_sent"] == 0
    assert summary["answered"] == summary["sent"] >= 10
    assert 2 <= summary["achieved_rate"] <= 25
    assert 0 < summary["feedback_posted"] < summary["answered"]
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert sum(summary["arms"].values()) == summary["answered"]
    triage = summary["triage"]  # the reading room replayed in worklist and in arrival order
    assert triage["studies"] == summary["answered"] and triage["readers"] == 1 and triage["read_s"] == 0.09
    assert (triage["worklist"] is None) == (triage["fifo"] is None) == (triage["urgent_studies"] == 0)

    predictions, feedback = _stored(served.store_url)
    assert len(predictions) - len(before_predictions) == summary["answered"]
    new_feedback = feedback[len(before_feedback) :]
    assert len(new_feedback) == summary["feedback_posted"]
    assert summary["source"] == "clinic" and summary["warnings"] == [] and summary["clinic"]["kind"] == "chest"
    ds = Dataset.open(served.dataset)
    labels = set(ds.labels)
    pool = build_clinic_pool(ds, 40, seed=1).dataset  # what was sent: the same seed gives the same pool
    pool_rows = pool.manifest
    for row in new_feedback:
        assert row["reader"] == "simulator"
        given = row["labels"]
        assert isinstance(given, dict) and given and set(given) <= labels
        # the labels are a clinic film's ground truth
        match = np.ones(len(pool_rows), bool)
        for label, value in given.items():
            match &= (pool_rows[label] == value).to_numpy()
        assert match.any(), given
    # nothing sent was a dataset film: every stored input is one of the pool's, none a held-out one
    held_out = NearDuplicateIndex(ds.images(np.flatnonzero(ds.manifest["split"].isin(["val", "test"]))))
    pool_index = NearDuplicateIndex(pool.images(pool.indices("all")), threshold=0)
    for prediction in predictions[len(before_predictions) :]:
        pixels = np.asarray(Image.open(input_path(served.root / "inputs", str(prediction["input_sha256"]))))
        assert held_out.find(pixels) is None and pool_index.find(pixels) is not None


def test_held_out_traffic_is_marked_and_its_feedback_refused_by_the_export(served: Served, tmp_path: Path) -> None:
    since = datetime.now(UTC)
    args = ["simulate", served.url, "--data", str(served.dataset), "--rate", "10", "--duration", "1.5"]
    result = CliRunner().invoke(app, [*args, "--split", "test", "--feedback-rate", "1", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "warning: the 'test' split is held-out images" in " ".join(result.output.split())
    summary = CliRunner().invoke(app, [*args, "--split", "test", "--drift", "brightness=0.2,noise=0.02", "--json"])
    assert json.loads(summary.stdout)["warnings"] and json.loads(summary.stdout)["source"] == "split:test"
    store_url, inputs = served.store_url, served.root / "inputs"
    info = export_feedback(tmp_path / "fb", store_url, inputs, since=since, dataset=served.dataset)
    # refused by identity first: the simulator routes by the study id, the service logs its hash
    assert info["images"] == 0 and info["held_out"]["held_out_study"] == info["predictions_with_feedback"] > 0
    assert "of a held-out patient or study" in held_out_summary(info)
    predictions, _ = _stored(store_url)
    keys = {p["study_key"] for p in predictions if p["study_key"]}
    ds = Dataset.open(served.dataset)
    assert keys and not keys & set(ds.manifest["study_id"])  # a hash of the key is stored, never the key


def test_background_simulation_injects_drift_into_what_the_server_sees(served: Served) -> None:
    inputs = served.root / "inputs"
    before = set(inputs.rglob("*.png")) if inputs.exists() else set()
    handle = start_background(
        served.url,
        served.dataset,
        rate=20,
        feedback_rate=0.0,
        mode="batch",
        batch_size=4,
        drift=parse_drift("brightness=0.3,noise=0.02"),
        seed=2,
        split="test",  # the dataset's own films, whose clean brightness is known
    )
    time.sleep(2.0)
    assert handle.running
    summary = handle.stop()
    assert not handle.running
    assert summary["answered"] >= 5 and summary["failed"] == {}
    assert summary["drift"]["brightness"] == 0.3
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = set(inputs.rglob("*.png")) - before
        if len(new) >= summary["answered"]:
            break
        time.sleep(0.1)
    assert len(new) >= summary["answered"]  # noise makes every drifted upload distinct
    ds = Dataset.open(served.dataset)
    clean = ds.images(ds.indices("test")).astype(float).mean()
    drifted = np.mean([np.asarray(Image.open(p), dtype=float).mean() for p in new])
    assert drifted > clean + 0.2 * 255, (clean, drifted)


def test_ctrl_c_stops_the_simulator_cleanly_with_a_summary(served: Served) -> None:
    cmd = [sys.executable, "-c", "from radflow.cli import main; main()", "simulate", served.url]
    cmd += ["--data", str(served.dataset), "--rate", "20", "--duration", "120", "--split", "train", "--json"]
    before = len(_stored(served.store_url)[0])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Ctrl-C once it is sending (on a loaded machine the interpreter alone can take seconds to start)
        deadline = time.monotonic() + 60
        while len(_stored(served.store_url)[0]) < before + 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    assert summary["answered"] > 0 and summary["failed"] == {}
    assert summary["elapsed_s"] < 10


def test_loadtest_runs_headless_locust_and_writes_its_reports(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["loadtest", served.url, "--users", "2", "--duration", "5", "--data", str(served.dataset)]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "RPS" in result.output and "/v1/predict" in result.output
    assert (out / "locust-report.html").stat().st_size > 1000
    with (out / "locust_stats.csv").open() as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    predict = rows["/v1/predict"]
    assert int(predict["Request Count"]) >= 10 and float(predict["Requests/s"]) > 1
    # a random-init model scores near 0.5, never a confident miss: no request fails
    assert int(predict["Failure Count"]) == 0
    # Locust ran in its own process: radflow's side never imports it (gevent would patch threads
    # and asyncio). Checked in a fresh interpreter, since other tests' clients (tritonclient) bring gevent.
    probe = (
        "import sys; from radflow.cli import app; import radflow.sim.loadtest, radflow.sim.simulator; "
        "assert 'gevent' not in sys.modules and 'locust' not in sys.modules, 'locust/gevent imported'"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_loadtest_counts_answers_far_from_ground_truth_as_failures(served: Served, tmp_path: Path) -> None:
    # max error 0.01: every labelled finding the random model scores away from 0/1 is "wrong"
    out = tmp_path / "strict"
    args = ["loadtest", served.url, "--users", "1", "--duration", "2", "--data", str(served.dataset)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--max-error", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (endpoint,) = report["endpoints"]
    assert endpoint["requests"] > 0 and endpoint["failures"] == endpoint["requests"] == report["wrong_predictions"]
    assert all(f["error"].startswith("wrong prediction: ") for f in report["failures"])
    assert report["max_error"] == 0.01 and report["reports"]["html"]


def test_simulate_posts_the_true_value_for_a_regression_model(tmp_path: Path) -> None:
    model = make_onnx(tmp_path / "model", seed=0, task="regression")
    dataset = make_dataset(tmp_path / "ds", task="regression", n=30, seed=4)
    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    server = ServerProcess(["--model", str(model), "--store-url", store_url, "--log-level", "warning"]).start()
    try:
        args = ["simulate", server.url, "--data", str(dataset), "--rate", "10", "--duration", "1.5"]
        result = CliRunner().invoke(app, [*args, "--feedback-rate", "1", "--clinic-images", "20", "--json"])
    finally:
        server.kill()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["failed"] == {} and summary["answered"] > 0
    assert summary["feedback_posted"] == summary["answered"]
    _, feedback = _stored(store_url)
    assert summary["clinic"]["kind"] == "hand"  # new patients' hand films for a bone-age model
    pool = build_clinic_pool(Dataset.open(dataset), 20, seed=0).dataset
    truths = set(pool.targets()[:, 0].tolist())
    assert len(feedback) == summary["answered"]
    assert all(row["labels"] is None and row["value"] in truths for row in feedback)
