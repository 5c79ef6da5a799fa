"""Prometheus metrics of one service instance (own registry, so several apps can live in one process).

``radflow serve --workers N`` runs N processes behind one port: prometheus-client's multiprocess mode
then keeps every process's values in files under ``PROMETHEUS_MULTIPROC_DIR`` (set before the workers
start, see :mod:`radflow.serve.server`) and :meth:`ServiceMetrics.render` answers the sum over all of
them (:class:`~prometheus_client.multiprocess.MultiProcessCollector`), whichever process is asked.
Counters and histograms add up, dead processes included (what they answered was answered). Gauges say
how they combine (``multiprocess_mode``): requests in flight and drift window sizes add up over the
live processes; a drift score is the worst live process's window (each process monitors the traffic
it answered), a threshold the same in all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "ServiceMetrics", "multiprocess"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """Whether this process writes its metrics for a multi-process server (``PROMETHEUS_MULTIPROC_DIR`` set)."""
    return bool(os.environ.get(MULTIPROC_ENV))


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_SCORE = tuple(i / 10 for i in range(1, 11))


class ServiceMetrics:
    """Requests, latency, queueing, batching and score distributions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        arm = ["endpoint", "model", "version", "arm"]
        self.requests = Counter("radflow_requests", "HTTP requests answered.", [*arm, "status"], registry=self.registry)
        self.latency = Histogram(
            "radflow_request_latency_seconds",
            "Time to answer a request.",
            arm,
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "radflow_requests_in_flight",
            "Requests being handled now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "radflow_rejected", "Requests refused: overload (503) or timeout (504).", ["reason"], registry=self.registry
        )
        self.queue_time = Histogram(
            "radflow_queue_seconds",
            "Time a request waited for its batch.",
            ["model", "version"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "radflow_batch_size",
            "Images per ONNX Runtime call.",
            ["model", "version"],
            buckets=_BATCH,
            registry=self.registry,
        )
        self.compute_time = Histogram(
            "radflow_inference_seconds",
            "ONNX Runtime time per batch.",
            ["model", "version"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.scores = Histogram(
            "radflow_label_score",
            "Predicted probability per label.",
            ["model", "version", "arm", "label"],
            buckets=_SCORE,
            registry=self.registry,
        )
        drift = ["model", "version", "feature", "statistic"]
        self.drift_score = Gauge(
            "radflow_drift_score",
            "Drift of a feature against the model's reference.",
            drift,
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.drift_threshold = Gauge(
            "radflow_drift_threshold",
            "Score at which the drift statistic alerts.",
            drift,
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.drift_window = Gauge(
            "radflow_drift_window",
            "Predictions in the drift window.",
            ["model", "version"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.alerts = Counter(
            "radflow_alerts",
            "Monitoring alerts recorded (drift crossings, auto-rule actions).",
            ["kind", "model", "version", "feature", "statistic"],
            registry=self.registry,
        )
        self.values = Histogram(
            "radflow_predicted_value",
            "Predicted regression value.",
            ["model", "version", "arm"],
            buckets=(12, 24, 48, 72, 96, 120, 144, 168, 192, 216, 240),
            registry=self.registry,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: ``labels()`` locks and checks its values on every call, and a
        workflow answer observes a score per label per crop (tens of lookups an answer)."""
        key = (id(metric), labels)  # the metrics live as long as the service
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def batch_observer(self, model: str, version: str) -> Callable[[int, list[float], float], None]:
        """A :class:`~radflow.inference.batching.DynamicBatcher` ``on_batch`` callback for one model."""
        size = self.batch_size.labels(model, version)
        queue = self.queue_time.labels(model, version)
        compute = self.compute_time.labels(model, version)

        def observe(rows: int, waits: list[float], compute_s: float) -> None:
            size.observe(rows)
            compute.observe(compute_s)
            for wait in waits:
                queue.observe(wait)

        return observe

    def observe_drift(self, reports: dict[str, dict[str, Any]]) -> None:
        """Set the drift gauges from :meth:`radflow.monitor.drift.DriftTracker.evaluate` reports."""
        for report in reports.values():
            model, version = str(report["model"]), str(report["version"])
            window = report.get("window") or {}
            self.drift_window.labels(model, version).set(float(window.get("size", 0)))
            for s in report.get("scores") or []:
                labels = (model, version, s["feature"], s["statistic"])
                self.drift_score.labels(*labels).set(float(s["score"]))
                self.drift_threshold.labels(*labels).set(float(s["threshold"]))

    def render(self) -> bytes:
        """The exposition text: this instance's registry, or in multiprocess mode every worker's values summed."""
        if not multiprocess():
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
