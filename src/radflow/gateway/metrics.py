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
        self.pending = Gauge(
            "radflow_gateway_studies_pending", "Studies received and not yet stable.", registry=registry
        )
