"""The gateway's Prometheus metrics, registered beside the inference service's own (one ``/metrics`` page)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    """Associations, instances by outcome, series by routing outcome, studies waiting to be stable."""

    def __init__(self, registry: CollectorRegistry):
        self.associations = Counter(
            "radflow_gateway_associations",
            "DICOM associations requested, by outcome (accepted, rejected).",
            ["outcome"],
            registry=registry,
        )
        self.instances = Counter(
            "radflow_gateway_instances",
            "C-STORE instances by outcome: stored, non_image, no_pixel_data, mismatch, undecodable, out_of_resources.",
            ["outcome"],
            registry=registry,
        )
        self.studies = Counter(
            "radflow_gateway_studies",
            "Studies taken for scoring, by why: stable, max_age (never went quiet), shutdown, pulled (DICOMweb).",
            ["reason"],
            registry=registry,
        )
        self.series = Counter(
            "radflow_gateway_series",
            "Stable series, by outcome (scored, unrouted, skipped, failed) and rule.",
            ["outcome", "rule"],
            registry=registry,
        )
        self.images_scored = Counter(
            "radflow_gateway_images_scored",
            "Images of stable studies scored, by outcome (ok, failed).",
            ["outcome"],
            registry=registry,
        )
        self.pulled = Counter(
            "radflow_gateway_pulled_instances",
            "Instances retrieved by DICOMweb pull, by outcome (taken, non_image).",
            ["outcome"],
            registry=registry,
        )
        self.kafka_images = Counter(
            "radflow_gateway_kafka_images",
            "Kafka mode: images by outcome: published, unpublishable (not de-identifiable), publish_failed, "
            "answered (result delivered), failed (no result could be built), dead_letter (the worker refused it), "
            "evicted (over max_awaiting_mb, oldest first), expired (no answer within answer_timeout_s), "
            "unanswered (still awaited at shutdown).",
            ["outcome"],
            registry=registry,
        )
        self.kafka_answers = Counter(
            "radflow_gateway_kafka_answers",
            "Kafka mode: answers and dead letters read, by outcome: matched (a kept source), dead_letter (for a kept "
            "source), unknown (another gateway's, evicted, or from before a restart: skipped).",
            ["outcome"],
            registry=registry,
        )
        self.kafka_awaiting = Gauge(
            "radflow_gateway_kafka_awaiting", "Kafka mode: published images whose answer is awaited.", registry=registry
        )
        self.kafka_awaiting_bytes = Gauge(
            "radflow_gateway_kafka_awaiting_bytes",
            "Kafka mode: bytes of the source instances kept for the answers awaited.",
            registry=registry,
        )
        self.pending = Gauge(
            "radflow_gateway_studies_pending", "Studies received and not yet stable.", registry=registry
        )
