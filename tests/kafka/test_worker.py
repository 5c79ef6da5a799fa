"""The worker in process against a real Kafka-protocol broker (Tansu): rows, topics, duplicates, dead letters."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from radflow.inference import InferenceService, ServeSettings
from radflow.kafka import ImageMessage, KafkaSettings, Worker, create_producer, publish_image
from tests.kafka.topics import kafka_settings, read_topic, rows
from tests.serve.harness import metric_value
from tests.serve.models import png_bytes
from tests.tansu import TansuBroker, tansu  # noqa: F401  (the session's broker)


def test_worker_scores_answers_dedupes_and_dead_letters(
    tansu: TansuBroker,  # noqa: F811
    onnx_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    db = tmp_path / "serving.db"
    serve = ServeSettings(
        model=str(onnx_pair[0]), store_url=f"sqlite:///{db}", store_inputs=False, drift=False, max_queue_delay_ms=1
    )
    study = hashlib.sha256(b"1.2.826.0.1.3680043.8.498.1").hexdigest()

    async def scenario(settings: KafkaSettings) -> dict[str, Any]:
        service = InferenceService(serve)
        await service.start()
        labels = service.require_router().champion.model.labels
        settings.urgent = {labels[0]: 0.0}  # every answer is urgent for its first label
        producer = create_producer(settings)
        await producer.start()
        ids = [await publish_image(producer, settings, png_bytes(i), study=study) for i in range(4)]
        twice = ImageMessage.create(png_bytes(9))
        for _ in range(2):  # the same message delivered twice
            await producer.send_and_wait(settings.images_topic, twice.encode())
        await producer.send_and_wait(settings.images_topic, b"\x00 not json")
        bad_image = {"id": str(uuid.uuid4()), "image": base64.b64encode(b"no image at all").decode()}
        await producer.send_and_wait(settings.images_topic, json.dumps(bad_image).encode())
        phi = {"id": str(uuid.uuid4()), "image": base64.b64encode(png_bytes(1)).decode(), "study": "1.2.3.4"}
        await producer.send_and_wait(settings.images_topic, json.dumps(phi).encode())
        await producer.stop()

        worker = Worker(settings, service)
        await worker.start()
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        answers = await read_topic(settings, settings.predictions_topic, 6)
        dead = await read_topic(settings, settings.dead_letter_topic, 3)
        urgent = await read_topic(settings, settings.urgent_topic, 6)
        stop.set()
        await run
        metrics = service.metrics.render().decode()
        await service.stop()
        return {"ids": [*ids, twice.id], "answers": answers, "dead": dead, "urgent": urgent, "metrics": metrics}

    settings = kafka_settings(tansu)
    tansu.topics(settings.topics(), partitions=2)
    out = asyncio.run(asyncio.wait_for(scenario(settings), 60))

    stored = rows(db)
    # one row per message (the duplicate made none); the prediction id is the message id
    assert sorted(r[0] for r in stored) == sorted(out["ids"])
    assert {r[1] for r in stored if r[0] in out["ids"][:4]} == {hashlib.sha256(study.encode()).hexdigest()}
    assert sorted(a["id"] for a in out["answers"]) == sorted([*out["ids"], out["ids"][-1]])
    assert all(a["message_id"] == a["id"] and a["findings"] for a in out["answers"])
    assert len(out["urgent"]) == 6 and all(u["urgent"] for u in out["urgent"])
    reasons = sorted(d["reason"] for d in out["dead"])
    assert len(reasons) == 3
    assert any("not JSON" in r for r in reasons)
    assert any("field 'study'" in r for r in reasons)
    assert any("not a PNG, JPEG or DICOM file" in r for r in reasons)
    assert base64.b64decode(next(d for d in out["dead"] if "not JSON" in d["reason"])["original"]) == b"\x00 not json"
    m = out["metrics"]
    assert metric_value(m, "radflow_kafka_scored_total", outcome="scored") == 5
    assert metric_value(m, "radflow_kafka_scored_total", outcome="duplicate") == 1
    assert metric_value(m, "radflow_kafka_dead_letters_total", reason="invalid") == 2
    assert metric_value(m, "radflow_kafka_dead_letters_total", reason="unscorable") == 1
    assert metric_value(m, "radflow_kafka_consumed_total", topic=settings.images_topic) == 9
    assert metric_value(m, "radflow_kafka_commits_total") >= 1
    assert "radflow_kafka_lag{" in m  # per partition, 0 once the worker has taken everything
    assert all(metric_value(m, "radflow_kafka_lag", partition=p) == 0 for p in ("0", "1"))
