"""`radflow worker` processes against a real Kafka-protocol broker (Tansu): kill -9 mid-stream loses nothing.

After the restart every image has exactly one prediction row (offsets are committed only after the
rows are stored, and a redelivered message is the same row), every answer reached the predictions
topic, and SIGTERM ends a worker cleanly (in flight finished, committed, group left).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from radflow.kafka import KafkaSettings, create_producer, publish_image
from tests.kafka.topics import kafka_settings, read_topic, rows, topic_env
from tests.serve.models import png_bytes
from tests.tansu import TansuBroker, tansu  # noqa: F401  (the session's broker)

IMAGES = 150


def start_worker(model: Path, db: Path, settings: KafkaSettings, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-c",
        "from radflow.cli import main; main()",
        "worker",
        "--model",
        str(model),
        "--store-url",
        f"sqlite:///{db}",
        "--bootstrap",
        settings.bootstrap,
        "--group-id",
        settings.group_id,
        "--max-in-flight",
        "2",
        "--batch-size",
        "2",
    ]
    env = {**os.environ, **topic_env(settings), "RADFLOW_DRIFT": "false", "RADFLOW_STORE_INPUTS": "false"}
    env["RADFLOW_KAFKA_SESSION_TIMEOUT_S"] = "2"  # the killed member's partitions move on after 2 s
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_rows(db: Path, proc: subprocess.Popen[bytes], log: Path, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = len(rows(db))
        if n >= at_least:
            return n
        assert proc.poll() is None, f"the worker exited with {proc.returncode}: {log.read_text()[-2000:]}"
        time.sleep(0.02)
    raise AssertionError(f"{len(rows(db))} rows after {timeout_s} s, expected {at_least}: {log.read_text()[-2000:]}")


def test_kill_9_mid_stream_then_restart_gives_every_image_one_row(
    tansu: TansuBroker,  # noqa: F811
    onnx_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    settings = kafka_settings(tansu)
    tansu.topics(settings.topics(), partitions=2)

    async def publish() -> list[str]:
        producer = create_producer(settings)
        await producer.start()
        try:
            return list(await asyncio.gather(*(publish_image(producer, settings, png_bytes(i)) for i in range(IMAGES))))
        finally:
            await producer.stop()

    ids = asyncio.run(publish())
    db, log = tmp_path / "serving.db", tmp_path / "worker.log"

    first = start_worker(onnx_pair[0], db, settings, log)
    try:
        seen = wait_rows(db, first, log, 1, timeout_s=60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert seen < IMAGES, "the worker finished before it was killed: nothing was tested mid-stream"

    second = start_worker(onnx_pair[0], db, settings, log)
    try:
        wait_rows(db, second, log, IMAGES, timeout_s=60)
        time.sleep(0.5)  # a redelivered message would add its second row by now, if the store allowed one
        stored = [r[0] for r in rows(db)]
        answers = asyncio.run(read_topic(settings, settings.predictions_topic, IMAGES))
    finally:
        second.send_signal(signal.SIGTERM)
        code = second.wait(30)
    assert code == 0, log.read_text()[-2000:]
    assert len(stored) == IMAGES and set(stored) == set(ids)  # exactly one row per image
    assert {a["id"] for a in answers} == set(ids)  # at least once on the predictions topic
