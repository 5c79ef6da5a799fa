"""Kafka throughput: images/s through the images topic -> ``radflow worker`` vs ``radflow serve`` over HTTP, one model.

Both paths score small_cnn at 256 px (random weights, exported as bench/serve.py does) with default
settings, every prediction logged with its input stored:

1. HTTP: ``radflow serve`` driven by bench/serve.py's httpx client at 16 connections (the 512 px PNGs as
   multipart bodies) for ``--seconds`` after a warm-up;
2. Kafka: the same PNGs published (de-identified, as every door publishes them) to a 2-partition images
   topic on a Tansu broker beforehand, then one ``radflow worker`` started; its rate is the prediction rows
   written between 10% and 90% of the stream over the time that took (startup and group join excluded).

Goal (issue 16), printed as a ratio line: Kafka rate >= 0.9 of the HTTP rate.

    .venv/bin/python bench/kafka.py [--images 600] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.tansu: the broker the tests run

from radflow.kafka import KafkaSettings, create_producer, publish_image
from serve import _export, _httpx_load, _images, _multipart, _radflow
from tests.tansu import tansu_broker

from _table import print_ratio, print_table

GOAL = 0.9


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _http_rate(onnx: Path, pngs: list[bytes], seconds: float, tmp: Path) -> float:
    (tmp / "http").mkdir()
    server = _radflow(onnx, tmp / "http")
    try:
        server.wait_ready()
        url = server.url + "/v1/predict"
        bodies = [_multipart(p) for p in pngs]
        asyncio.run(_httpx_load(url, bodies, 16, 2.0))  # warm-up
        return asyncio.run(_httpx_load(url, bodies, 16, seconds)).rate
    finally:
        server.stop()


def _kafka_rate(onnx: Path, pngs: list[bytes], images: int, bootstrap: str, tmp: Path) -> float:
    settings = KafkaSettings(bootstrap=bootstrap, group_id="bench")

    async def publish() -> None:
        from radflow.kafka import ensure_topics

        await ensure_topics(settings, partitions=2)
        producer = create_producer(settings)
        await producer.start()
        try:
            for start in range(0, images, 64):
                await asyncio.gather(
                    *(
                        publish_image(producer, settings, pngs[i % len(pngs)])
                        for i in range(start, min(images, start + 64))
                    )
                )
        finally:
            await producer.stop()

    asyncio.run(publish())
    db = tmp / "kafka" / "serving.db"
    db.parent.mkdir()
    cmd = [sys.executable, "-c", "from radflow.cli import main; main()", "worker", "--model", str(onnx)]
    cmd += ["--store-url", f"sqlite:///{db}", "--bootstrap", bootstrap, "--group-id", "bench", "--log-level", "warning"]
    with (tmp / "kafka" / "worker.log").open("wb") as out:
        proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    low, high = int(images * 0.1), int(images * 0.9)
    t_low = t_high = None
    try:
        deadline = time.monotonic() + 600
        while t_high is None and time.monotonic() < deadline:
            n = _count(db)
            now = time.perf_counter()
            if t_low is None and n >= low:
                t_low, n_low = now, n
            if n >= high:
                t_high, n_high = now, n
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited: {(tmp / 'kafka' / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(60)
    if t_low is None or t_high is None:
        raise RuntimeError("the worker did not get through the stream in 600 s")
    return (n_high - n_low) / (t_high - t_low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="Images published for the Kafka run.")
    parser.add_argument("--seconds", type=float, default=6.0, help="Measured seconds of the HTTP run.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radflow-bench-kafka-") as name:
        tmp = Path(name)
        onnx = _export("small_cnn", 256, tmp)
        pngs = _images(32)
        http = _http_rate(onnx, pngs, args.seconds, tmp)
        broker = tansu_broker()
        try:
            kafka = _kafka_rate(onnx, pngs, args.images, next(broker).bootstrap, tmp)
        finally:
            broker.close()
    print_table(["path", "images/s"], [["HTTP /v1/predict, 16 connections", http], ["Kafka -> radflow worker", kafka]])
    print_ratio("kafka / http images per second", kafka / http, GOAL)


if __name__ == "__main__":
    main()
