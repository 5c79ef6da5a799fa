"""``POST /v1/predict?async=true``: 202 with the id, the image on the images topic, the result by GET once scored."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

from radflow.inference import ServeSettings
from radflow.kafka import KafkaHandoff, Worker
from tests.kafka.topics import kafka_settings
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes
from tests.tansu import TansuBroker, tansu  # noqa: F401  (the session's broker)


def test_async_predict_is_scored_by_a_worker_and_read_back_by_id(
    tansu: TansuBroker,  # noqa: F811
    onnx_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    settings = kafka_settings(tansu)
    tansu.topics(settings.topics())
    app = AppHarness(
        ServeSettings(model=str(onnx_pair[0]), store_url=f"sqlite:///{tmp_path / 'serving.db'}", drift=False)
    )
    try:
        assert app.request("POST", "/v1/predict?async=true", content=png_bytes(0)).status_code == 400  # no Kafka
        app.app.state.kafka = handoff = KafkaHandoff(settings)
        raw_key = {"X-Routing-Key": "MRN-1"}
        bad_key = app.request("POST", "/v1/predict?async=true", content=png_bytes(0), headers=raw_key)
        assert bad_key.status_code == 422 and "sha256 hex" in bad_key.json()["error"]

        study = hashlib.sha256(b"study-1").hexdigest()
        queued = app.request("POST", "/v1/predict?async=true", content=png_bytes(3), headers={"X-Routing-Key": study})
        assert queued.status_code == 202, queued.text
        prediction_id = queued.json()["id"]
        assert queued.headers["location"] == f"/v1/predictions/{prediction_id}"
        assert app.request("GET", queued.headers["location"]).status_code == 404  # no worker has scored it yet

        worker = Worker(settings, app.service)
        stop = asyncio.Event()
        app.run(worker.start())
        running = asyncio.run_coroutine_threadsafe(worker.run(stop), app.loop)
        deadline = time.monotonic() + 20
        while (got := app.request("GET", queued.headers["location"])).status_code == 404:
            assert time.monotonic() < deadline, "the worker did not score the handed-off image"
            time.sleep(0.1)
        assert got.status_code == 200 and got.json()["id"] == prediction_id
        assert got.json()["study_key"] == hashlib.sha256(study.encode()).hexdigest()  # as the direct path keeps it
        app.loop.call_soon_threadsafe(stop.set)
        running.result(30)
        app.run(handoff.close())
    finally:
        app.close()
