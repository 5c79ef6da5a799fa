"""The hospital chain over Kafka: storescu -> radflow gateway (Kafka mode) -> Tansu -> radflow worker -> SR in Orthanc.

The gateway owns DICOM in and out and scores nothing: it publishes each routed image (de-identified PNG)
and keeps the source; a real ``Worker`` (consumer group, inference core, SQLite store) scores it and
answers on the predictions topic; the gateway matches the answer to the kept source and sends the SR
to Orthanc, where QIDO-RS finds it referencing its source. An instance that cannot be de-identified
and one the worker refuses (over its pixel limit) both end as dead-letter records, without PHI; an
answer the gateway does not know is skipped, and the bounds on kept sources evict the oldest and expire
stale ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid

from radflow.data.dicom import write_dicom
from radflow.gateway import Gateway, GatewaySettings
from radflow.inference import InferenceService, ServeSettings
from radflow.kafka import KafkaHandoff, KafkaSettings, Worker
from radflow.kafka.client import create_producer
from radflow.pacs import DicomWebSource, ResultSettings
from tests.e2e.test_pacs import PHI, ROOT, TODAY, _check_results, _srs, _storescu, _study
from tests.gateway.test_gateway import CALLING, Running
from tests.kafka.topics import kafka_settings, read_topic, rows, topic_env
from tests.orthanc import ORTHANC_AE, Orthanc, orthanc  # noqa: F401  (the session's PACS)
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes
from tests.tansu import TansuBroker, tansu  # noqa: F401  (the session's broker)

WORKER_MAX_PIXELS = 48 * 48
"""The worker's pixel limit, below the gateway's: a 64x64 instance is taken by the gateway, refused by the worker."""


@dataclass
class Chain:
    running: Running
    worker: Worker
    kafka: KafkaSettings
    db: Path
    dead: Path
    stop: asyncio.Event

    def metric(self, name: str, **labels: str) -> float:
        return self.running.metric(name, **labels)

    def wait(self, name: str, value: float, timeout: float = 20, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(name, **labels) < value:
            assert time.monotonic() < deadline, f"{name}{labels} did not reach {value} in {timeout} s"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def chain(
    tansu: TansuBroker,  # noqa: F811
    orthanc: Orthanc,  # noqa: F811
    onnx_pair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("gateway-kafka")
    kafka = kafka_settings(tansu, session_timeout_s=2)
    tansu.topics(kafka.topics())
    db, dead = root / "store" / "serving.db", root / "dead-letter"
    db.parent.mkdir()
    settings = GatewaySettings(
        port=0,
        allowed_aes=[CALLING],
        stable_after_s=0.3,
        results=ResultSettings(
            destination_ae=ORTHANC_AE, destination_port=orthanc.dicom_port, uid_root=ROOT, dead_letter_dir=dead
        ),
        kafka=kafka,
        kafka_group_id=f"{kafka.group_id}.gateway",
        drain_s=2,
    )
    running = Running(Gateway(settings))  # Kafka mode: no model, no store in the gateway
    serve = ServeSettings(
        model=str(onnx_pair[0]), store_url=f"sqlite:///{db}", drift=False, max_pixels=WORKER_MAX_PIXELS
    )
    service = InferenceService(serve)
    worker = Worker(kafka, service)
    stop = asyncio.Event()

    async def start_worker() -> asyncio.Task[None]:
        await service.start()
        await worker.start()
        return asyncio.create_task(worker.run(stop))

    task = running.run(start_worker())
    try:
        yield Chain(running, worker, kafka, db, dead, stop)
    finally:
        running.loop.call_soon_threadsafe(stop.set)
        running.run(asyncio.wait_for(asyncio.shield(task), 30))
        running.run(service.stop())
        running.close()


def _instance(folder: Path, study: str, size: tuple[int, int], name: str) -> Path:
    path = folder / f"{name}.dcm"
    pixels = np.random.default_rng(7).integers(0, 4096, size).astype(np.uint16)
    attributes = {**PHI, "StudyDate": TODAY, "StudyInstanceUID": study, "Modality": "DX", "BodyPartExamined": "CHEST"}
    write_dicom(path, pixels, bits_stored=12, uid_seed=name, attributes=attributes)
    return path


def _dead_letters(folder: Path) -> list[dict[str, Any]]:
    path = folder / "dead-letter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_study_over_kafka_comes_back_as_srs_and_bad_instances_as_dead_letters(
    chain: Chain,
    orthanc: Orthanc,  # noqa: F811
    tmp_path: Path,
) -> None:
    study, files = _study(tmp_path / "study", 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    other = generate_uid()
    thin = _instance(bad, other, (4, 64), "thin")  # 16:1, past the de-identification's aspect limit
    large = _instance(bad, other, (64, 64), "large")  # over the worker's pixel limit
    _storescu(chain.running.gateway.port, "RADFLOW", [*files, thin, large])

    srs = _srs(DicomWebSource(orthanc.dicomweb_url), study, 2, timeout=25)
    _check_results(srs, files, tmp_path)  # references equal the sources' UIDs, dciodvfy clean
    chain.wait("radflow_gateway_kafka_images_total", 1, outcome="dead_letter")
    chain.wait("radflow_gateway_kafka_images_total", 2, outcome="answered")
    assert chain.metric("radflow_gateway_kafka_images_total", outcome="published") == 3
    assert chain.metric("radflow_gateway_kafka_images_total", outcome="unpublishable") == 1
    assert chain.metric("radflow_gateway_kafka_awaiting") == 0
    assert chain.metric("radflow_pacs_results_total", kind="SR", outcome="delivered") == 2
    assert DicomWebSource(orthanc.dicomweb_url).series_of(other, "SR") == []

    stored = rows(chain.db)
    assert len(stored) == 2 and len({r[0] for r in stored}) == 2  # exactly one prediction row per scored image
    refused = asyncio.run(read_topic(chain.kafka, chain.kafka.dead_letter_topic, 1))
    letters = {d["outcome"]: d for d in _dead_letters(chain.dead)}
    assert set(letters) == {"unpublishable", "dead_letter"}
    assert letters["dead_letter"]["message_id"] == refused[0]["message_id"]
    assert letters["dead_letter"]["message_id"] not in {r[0] for r in stored}
    assert "aspect" in letters["unpublishable"]["reason"] and "pixels" in letters["dead_letter"]["reason"]
    text = (chain.dead / "dead-letter.jsonl").read_text()
    for value in PHI.values():
        assert value.split("^")[0] not in text


def test_an_answer_for_an_unknown_id_is_counted_and_skipped(chain: Chain) -> None:
    before = chain.metric("radflow_gateway_kafka_answers_total", outcome="unknown")

    async def send() -> None:
        producer = create_producer(chain.kafka)
        await producer.start()
        try:
            body = {"id": "x", "message_id": "00000000-0000-4000-8000-000000000000", "findings": []}
            await producer.send_and_wait(chain.kafka.predictions_topic, json.dumps(body).encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    chain.wait("radflow_gateway_kafka_answers_total", before + 1, outcome="unknown")


def test_v1_async_mode_is_wired_from_the_environment_and_scored_by_the_chains_worker(
    chain: Chain,
    onnx_pair: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"RADFLOW_KAFKA_BOOTSTRAP": chain.kafka.bootstrap, **topic_env(chain.kafka)}.items():
        monkeypatch.setenv(name, value)
    app = AppHarness(ServeSettings(model=str(onnx_pair[0]), store_url=f"sqlite:///{chain.db}", drift=False))
    try:
        handoff = app.app.state.kafka
        assert isinstance(handoff, KafkaHandoff) and handoff.settings.images_topic == chain.kafka.images_topic
        queued = app.request("POST", "/v1/predict?async=true", content=png_bytes(5))
        assert queued.status_code == 202, queued.text
        location = queued.headers["location"]
        assert location == f"/v1/predictions/{queued.json()['id']}"
        deadline = time.monotonic() + 20
        while (got := app.request("GET", location)).status_code == 404:
            assert time.monotonic() < deadline, "the worker did not score the handed-off image"
            time.sleep(0.1)
        assert got.status_code == 200 and got.json()["id"] == queued.json()["id"]
        assert got.json()["model_name"] and got.json()["outputs"]["findings"], got.json()
    finally:
        app.close()
    assert handoff._producer is None  # the lifespan closed the producer after the service
