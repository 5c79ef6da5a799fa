"""The worker's Prometheus metrics, registered beside its inference service's own (one ``/metrics`` page)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics"]

_POLL = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)


class WorkerMetrics:
    """Messages consumed, scored, dead-lettered; lag per partition; messages per poll; work in flight."""

    def __init__(self, registry: CollectorRegistry):
        self.consumed = Counter(
            "radflow_kafka_consumed", "Messages taken from the images topic.", ["topic"], registry=registry
        )
        self.scored = Counter(
            "radflow_kafka_scored",
            "Messages answered, by outcome: scored, duplicate (already had its prediction row: not scored again).",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "radflow_kafka_dead_letters",
            "Messages sent to the dead-letter topic, by why: invalid (the message), unscorable (the image), failed.",
            ["reason"],
            registry=registry,
        )
        self.lag = Gauge(
            "radflow_kafka_lag",
            "Messages on the partition not yet taken by this worker (high watermark - position).",
            ["topic", "partition"],
            registry=registry,
        )
        self.poll_size = Histogram(
            "radflow_kafka_poll_messages", "Messages per poll of the broker.", buckets=_POLL, registry=registry
        )
        self.in_flight = Gauge("radflow_kafka_in_flight", "Messages being scored now.", registry=registry)
        self.paused = Gauge(
            "radflow_kafka_paused",
            "1 while the worker's partitions are paused (max_in_flight reached).",
            registry=registry,
        )
        self.commits = Counter(
            "radflow_kafka_commits", "Offset commits (each after the rows before it were stored).", registry=registry
        )
