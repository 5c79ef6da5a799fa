"""Drift monitoring in the service: held-out images stay quiet, brightened ones raise one durable alert."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from radflow.data.dataset import Dataset
from radflow.inference import ServeSettings
from radflow.store import Store
from tests.export.checkpoints import png_bytes
from tests.serve.harness import AppHarness, metric_value
from tests.serve.models import make_onnx

WINDOW = 200


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model exported with a reference from a 1200-image dataset (720 train, 240 val, 240 test)."""
    return make_onnx(tmp_path_factory.mktemp("monitoring") / "m", seed=3, n=1200)


@pytest.fixture(scope="module")
def held_out(model: Path) -> np.ndarray:
    """The test split of the model's own dataset: images from the reference distribution it never profiled."""
    ds = Dataset.open(next(model.parent.glob("ds-*")))
    return ds.images(ds.indices("test"))[:WINDOW]


@pytest.fixture()
def app(model: Path, tmp_path: Path) -> Iterator[AppHarness]:
    settings = ServeSettings(
        model=str(model),
        store_url=f"sqlite:///{tmp_path / 'serving.db'}",
        store_inputs=False,
        drift_window=WINDOW,
        drift_min_window=WINDOW,
        drift_interval_s=3600,  # scored on request only, so the test decides when
        threads=1,
    )
    harness = AppHarness(settings)
    yield harness
    harness.close()


def _send(app: AppHarness, images: np.ndarray) -> None:
    async def go() -> None:
        sem = asyncio.Semaphore(8)

        async def one(img: np.ndarray) -> None:
            async with sem:
                r = await app.client.post("/v1/predict", content=png_bytes(img), headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text

        await asyncio.gather(*(one(img) for img in images))

    app.run(go(), timeout=120)


def _report(app: AppHarness) -> dict:
    r = app.request("GET", "/v1/monitoring")
    assert r.status_code == 200, r.text
    return r.json()


def _brighten(images: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(images.astype(np.int32) + round(amount * 255), 0, 255).astype(np.uint8)


def test_monitoring_collects_until_the_window_is_full_then_scores(app: AppHarness, held_out: np.ndarray) -> None:
    _send(app, held_out[:20])
    drift = _report(app)["drift"]
    assert drift["enabled"] is True
    (key, report), *_ = drift["models"].items()
    assert key == f"{report['model']}/{report['version']}"
    assert report["status"] == "collecting"
    assert report["window"] == {"size": 20, "capacity": WINDOW, "min": WINDOW}
    assert report["scores"] == []


def test_reference_traffic_stays_quiet_and_brightened_traffic_alerts_once(
    app: AppHarness, held_out: np.ndarray, tmp_path: Path
) -> None:
    _send(app, held_out)
    answer = _report(app)
    report = next(iter(answer["drift"]["models"].values()))
    assert report["status"] == "ok", [s for s in report["scores"] if s["alert"]]
    features = {(s["feature"], s["statistic"]) for s in report["scores"]}
    assert {("intensity_mean", "psi"), ("intensity_mean", "ks"), ("score:Cardiomegaly", "psi")} <= features
    assert ("embedding", "mean_distance") in features
    quiet = {(s["feature"], s["statistic"]): s["score"] for s in report["scores"]}
    assert quiet[("intensity_mean", "psi")] < 0.1
    assert answer["alerts"] == []

    _send(app, _brighten(held_out, 0.3))  # the window now holds only brightened images
    answer = _report(app)
    report = next(iter(answer["drift"]["models"].values()))
    assert report["status"] == "alert" and report["alert"] is True
    loud = {(s["feature"], s["statistic"]): s for s in report["scores"]}
    assert loud[("intensity_mean", "psi")]["score"] > 0.2 > quiet[("intensity_mean", "psi")]
    assert loud[("intensity_mean", "psi")]["alert"] is True
    assert loud[("embedding", "mean_distance")]["score"] > loud[("embedding", "mean_distance")]["threshold"]
    alerts = answer["alerts"]
    assert alerts and {a["kind"] for a in alerts} == {"drift"}
    assert any(a["feature"] == "intensity_mean" and a["statistic"] == "psi" for a in alerts)
    first = len(alerts)

    # Asking again (and the background scoring) must not record the same crossing twice.
    app.run(app.service.evaluate_drift())
    assert len(_report(app)["alerts"]) == first

    metrics = app.request("GET", "/metrics").text
    model, version = report["model"], report["version"]
    labels = {"model": model, "version": version, "feature": "intensity_mean", "statistic": "psi"}
    assert metric_value(metrics, "radflow_drift_score", **labels) > 0.2
    assert metric_value(metrics, "radflow_drift_threshold", **labels) == pytest.approx(0.2)
    assert metric_value(metrics, "radflow_alerts_total", kind="drift", **labels) == 1.0
    assert metric_value(metrics, "radflow_drift_window", model=model, version=version) == WINDOW

    # The alert rows are durable: a fresh connection to the database sees them.
    store = Store(app.service.settings.resolved_store_url())
    try:
        rows = store.alerts(100)
        assert len(rows) == first
        assert all(r["model_name"] == model and r["score"] >= r["threshold"] for r in rows)
        # one event, one row, and the row lists every feature that moved (not only its first crossing)
        assert first == 1 and "intensity_mean" in rows[0]["details"]["features"], rows
        assert len(rows[0]["details"]["crossings"]) >= 2
    finally:
        store.close()


def test_background_scoring_raises_the_alert_without_anyone_asking(
    model: Path, held_out: np.ndarray, tmp_path: Path
) -> None:
    settings = ServeSettings(
        model=str(model),
        store_url=f"sqlite:///{tmp_path / 'serving.db'}",
        store_inputs=False,
        drift_window=20,
        drift_min_window=20,
        drift_interval_s=0.1,
        threads=1,
    )
    app = AppHarness(settings)
    try:
        _send(app, _brighten(held_out[:20], 0.3))
        store = app.service.require_store()
        deadline = time.monotonic() + 20
        while not store.alerts() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {a["kind"] for a in store.alerts()} == {"drift"}
        assert metric_value(app.request("GET", "/metrics").text, "radflow_drift_window") == 20
    finally:
        app.close()


def test_settings_refuse_a_window_smaller_than_its_minimum() -> None:
    with pytest.raises(ValueError, match="drift_min_window"):
        ServeSettings(drift_window=50, drift_min_window=100)


def test_monitoring_can_be_switched_off(model: Path, tmp_path: Path) -> None:
    settings = ServeSettings(model=str(model), store_url=f"sqlite:///{tmp_path / 'serving.db'}", drift=False, threads=1)
    app = AppHarness(settings)
    try:
        assert app.request("GET", "/v1/monitoring").json()["drift"] == {"enabled": False}
    finally:
        app.close()


def test_a_model_without_reference_is_served_and_says_why(model: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare" / "model.onnx"
    bare.parent.mkdir()
    bare.write_bytes(model.read_bytes())
    settings = ServeSettings(model=str(bare), store_url=f"sqlite:///{tmp_path / 'serving.db'}", threads=1)
    app = AppHarness(settings)
    try:
        ds = Dataset.open(next(model.parent.glob("ds-*")))
        _send(app, ds.images(ds.indices("test"))[:3])
        report = _report(app)["drift"]["models"]["model/unregistered"]  # a plain file: its stem, unregistered
        assert report["status"] == "no_reference"
        assert "reference.json" in report["reason"]
        assert report["observed"] == 3
    finally:
        app.close()


def test_drift_window_costs_little_per_request(app: AppHarness, held_out: np.ndarray) -> None:
    """Feeding the window (summary in the decode thread, append under a lock) is far below a request's cost."""
    monitor = next(iter(app.service.drift.monitors())) if app.service.drift else None
    assert monitor is not None and monitor.reference is not None
    from radflow.monitor.reference import input_summary

    pixels = held_out[0]
    scores = np.zeros(len(monitor.outputs))
    emb = np.zeros(monitor.embedding_dim)
    start = time.perf_counter()
    for _ in range(2000):
        monitor.observe(input_summary(pixels), scores, emb)
    per_call_us = (time.perf_counter() - start) / 2000 * 1e6
    assert per_call_us < 200, f"summary + window append took {per_call_us:.0f} us per image"


def test_auto_rule_promotes_a_clearly_better_shadow_challenger(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """Feedback that the challenger ranks perfectly (and the champion by chance) makes the rule promote it."""
    pytest.importorskip("radflow.monitor.online")
    from radflow.runtime import RadflowModel

    champion, challenger = onnx_pair
    settings = ServeSettings(
        model=str(champion),
        challenger=str(challenger),
        shadow=True,
        store_url=f"sqlite:///{tmp_path / 'serving.db'}",
        store_inputs=False,
        auto_rule_min_feedback=40,
        threads=1,
    )
    app = AppHarness(settings)
    try:
        assert app.run(app.service.apply_auto_rule()) is None, "no feedback yet: no action"
        rng = np.random.default_rng(7)
        images = [rng.integers(0, 256, (40, 36), dtype=np.uint8) for _ in range(60)]
        truth = RadflowModel.load(challenger).predict_batch(np.stack(images))
        scores = np.array([[f.probability for f in p.findings or []] for p in truth])
        positive = scores > np.median(scores, axis=0)
        for img, pos in zip(images, positive, strict=True):
            answer = app.request("POST", "/v1/predict", content=png_bytes(img), headers={"content-type": "image/png"})
            assert answer.status_code == 200
            labels = {f["label"]: int(p) for f, p in zip(answer.json()["findings"], pos, strict=True)}
            fb = app.request("POST", "/v1/feedback", json={"prediction_id": answer.json()["id"], "labels": labels})
            assert fb.status_code == 201, fb.text
        deadline = time.monotonic() + 30
        while len(app.service.require_store().predictions()) < 2 * len(images) and time.monotonic() < deadline:
            time.sleep(0.05)  # the shadow rows are written behind the answers
        result = app.run(app.service.apply_auto_rule())
        assert result is not None and result["action"] == "promote", result
        state = app.service.require_router().state()
        assert state["champion"]["uri"] == str(challenger) and state["challenger"] is None
        rows = app.service.require_store().alerts(kind="auto_rule")
        assert len(rows) == 1 and rows[0]["statistic"] == "promote" and "better" in rows[0]["message"]
        assert "auto_rule" in {a["kind"] for a in app.request("GET", "/v1/monitoring").json()["alerts"]}
    finally:
        app.close()


def test_registry_models_bring_their_reference_from_the_run(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """Version 1 was exported with a reference (logged beside its ONNX file), version 2 without one."""
    from pydantic import SecretStr

    from radflow.export import log_onnx_to_mlflow
    from radflow.monitor.reference import REFERENCE_TAG, reference_path
    from radflow.registry import promote
    from radflow.runtime import ONNX_TAG
    from radflow.tracking import client as make_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_client(uri, create=True)
    experiment = client.create_experiment("serve", artifact_location=str(tmp_path / "mlartifacts"))
    client.create_registered_model("chest-xray")
    for i, path in enumerate(onnx_pair):
        run_id = client.create_run(experiment).info.run_id
        client.create_model_version("chest-xray", f"runs:/{run_id}/onnx", run_id=run_id)
        files = {ONNX_TAG: path, **({REFERENCE_TAG: reference_path(path)} if i == 0 else {})}
        log_onnx_to_mlflow(run_id, files, uri)
        client.set_terminated(run_id)
    promote("chest-xray", "1", uri)
    app = AppHarness(ServeSettings(workspace=tmp_path, admin_token=SecretStr("adm"), threads=1))
    try:
        assert _report(app)["drift"]["models"]["chest-xray/1"]["status"] == "collecting"
        promoted = app.request("POST", "/admin/promote", json={"version": "2"}, headers={"Authorization": "Bearer adm"})
        assert promoted.status_code == 200, promoted.text
        models = _report(app)["drift"]["models"]
        assert models["chest-xray/2"]["status"] == "no_reference"
        assert "reference.json" in models["chest-xray/2"]["reason"]
    finally:
        app.close()
