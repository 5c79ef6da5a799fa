"""Helpers of the Kafka tests: per-test settings (topics of their own) and reading a topic from its start."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from radflow.kafka import KafkaSettings
from tests.tansu import TansuBroker

__all__ = ["kafka_settings", "read_topic", "rows", "topic_env"]


def kafka_settings(broker: TansuBroker, **extra: Any) -> KafkaSettings:
    """Settings on ``broker`` with a fresh prefix for every topic and the group, so tests never share messages."""
    p = broker.prefix()
    return KafkaSettings(
        bootstrap=broker.bootstrap,
        images_topic=f"{p}.images",
        predictions_topic=f"{p}.predictions",
        urgent_topic=f"{p}.urgent",
        dead_letter_topic=f"{p}.dead",
        group_id=f"{p}.workers",
        **extra,
    )


def topic_env(settings: KafkaSettings) -> dict[str, str]:
    """The RADFLOW_KAFKA_* environment that gives a `radflow worker` process ``settings``' topics."""
    return {
        "RADFLOW_KAFKA_IMAGES_TOPIC": settings.images_topic,
        "RADFLOW_KAFKA_PREDICTIONS_TOPIC": settings.predictions_topic,
        "RADFLOW_KAFKA_URGENT_TOPIC": settings.urgent_topic,
        "RADFLOW_KAFKA_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
    }


def rows(db: Path) -> list[tuple[str, str | None]]:
    """(id, study_key) of the served prediction rows in the SQLite store ``db`` (none before it exists)."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT id, study_key FROM predictions WHERE shadow = 0").fetchall()
        except sqlite3.OperationalError:  # the worker is still creating the schema
            return []


async def read_topic(settings: KafkaSettings, topic: str, count: int, timeout_s: float = 15) -> list[dict[str, Any]]:
    """``count`` messages of ``topic`` from its start (no group: a reader joins nothing, so it starts at once)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[dict[str, Any]] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return got
