"""The gateway's Kafka mode, bounds of the kept sources, against a real broker (Tansu) and no worker.

No answer ever comes, so every kept source leaves by a bound: the oldest is evicted past
``max_awaiting_mb``, a stale one expires after ``answer_timeout_s``, the rest go unanswered at stop.
Each is counted and recorded in the results' dead-letter.jsonl by prediction id, without PHI.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from pydicom.uid import generate_uid

from radflow.gateway import study_hash
from radflow.gateway.metrics import GatewayMetrics
from radflow.gateway.remote import RemoteScoring
from radflow.pacs import ResultSettings
from radflow.pacs.results import ResultWriter
from tests.gateway.test_gateway import PATIENT_ID, make_instance
from tests.kafka.topics import kafka_settings, read_topic
from tests.orthanc import free_port
from tests.serve.harness import metric_value
from tests.tansu import TansuBroker, tansu  # noqa: F401  (the session's broker)


def test_kept_sources_are_evicted_oldest_first_expire_and_go_unanswered_at_stop(
    tansu: TansuBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    kafka = kafka_settings(tansu, session_timeout_s=2)
    tansu.topics(kafka.topics())
    study = generate_uid()
    for i in range(3):
        make_instance(tmp_path, study, "1.2.3", i)  # a 32x32 radiograph with a patient's name and id
    data = [(tmp_path / f"1.2.3-{i}.dcm").read_bytes() for i in range(3)]
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    dead = tmp_path / "dead"
    results = ResultWriter(
        ResultSettings(destination_ae="NOBODY", destination_port=free_port(), dead_letter_dir=dead), registry
    )
    remote = RemoteScoring(
        kafka, f"{kafka.group_id}.gw", results, metrics, max_bytes=int(len(data[0]) * 1.5), max_age_s=1.0
    )
    key = study_hash(study)

    async def scenario() -> list[str | None]:
        await remote.start()
        try:
            first = await remote.submit(key, data[0])
            second = await remote.submit(key, data[1])  # over 1.5 sources: the first goes
            assert list(remote.kept) == [second]
            await asyncio.sleep(1.7)  # the consumer's loop expires the second after 1 s
            assert remote.kept == {}
            third = await remote.submit(key, data[2])
            return [first, second, third]
        finally:
            await remote.stop(drain_s=0.1)  # the third is still awaited: unanswered

    ids = asyncio.run(scenario())

    def count(outcome: str) -> float:
        return metric_value(generate_latest(registry).decode(), "radflow_gateway_kafka_images_total", outcome=outcome)

    assert [count(o) for o in ("published", "evicted", "expired", "unanswered")] == [3, 1, 1, 1]
    assert metric_value(generate_latest(registry).decode(), "radflow_gateway_kafka_awaiting") == 0
    letters = [json.loads(line) for line in (dead / "dead-letter.jsonl").read_text().splitlines()]
    assert [(d["message_id"], d["outcome"]) for d in letters] == list(
        zip(ids, ["evicted", "expired", "unanswered"], strict=True)
    )
    assert all(d["study"] == key[:12] for d in letters)
    assert PATIENT_ID not in (dead / "dead-letter.jsonl").read_text()
    published = asyncio.run(read_topic(kafka, kafka.images_topic, 3))
    assert [m["id"] for m in published] == ids and all(m["study"] == key for m in published)
    assert all(PATIENT_ID not in json.dumps(m) for m in published)
