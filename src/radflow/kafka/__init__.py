"""The Kafka door: images in on a topic, answers, urgent findings and dead letters out (``radflow worker``).

- :mod:`radflow.kafka.settings`: :class:`KafkaSettings` (``kafka:`` in params.yaml, ``RADFLOW_KAFKA_*``).
- :mod:`radflow.kafka.messages`: the image message, de-identification for the topic, answers, dead letters.
- :mod:`radflow.kafka.client`: the producer, :func:`publish_image` (what other doors call), topic creation.
- :mod:`radflow.kafka.worker`: :class:`Worker`, the consumer group member over the inference core.
- :mod:`radflow.kafka.metrics`: the worker's Prometheus metrics.
- :mod:`radflow.kafka.server`: :func:`run_worker`, what ``radflow worker`` runs (signals, ``/metrics``).
"""

from __future__ import annotations

from radflow.kafka.client import MAX_MESSAGE_BYTES, KafkaHandoff, create_producer, ensure_topics, publish_image
from radflow.kafka.messages import ImageMessage, InvalidMessageError, deidentified_image, is_urgent
from radflow.kafka.settings import KafkaSettings
from radflow.kafka.worker import Deliver, Worker

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Deliver",
    "ImageMessage",
    "InvalidMessageError",
    "KafkaHandoff",
    "KafkaSettings",
    "Worker",
    "create_producer",
    "deidentified_image",
    "ensure_topics",
    "is_urgent",
    "publish_image",
]
