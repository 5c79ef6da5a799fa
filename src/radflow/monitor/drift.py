"""Drift: live inputs and outputs of a model version in a bounded window, scored against its reference.

The service calls :meth:`DriftMonitor.observe` once per served image (an O(1) copy into a ring
buffer under a lock, a few microseconds) and :meth:`DriftMonitor.evaluate` every few seconds and
on ``GET /v1/monitoring`` (off the event loop). Scores per feature:

* PSI (population stability index) of the window over the reference's decile bins (a value many
  reference images share, such as a black border's 0, is a bin of its own: ``reference.psi_edges``);
* the two-sample Kolmogorov-Smirnov statistic (and p-value) against the reference sample;
* for the embedding, the standardized mean distance: the RMS over dimensions of
  ``(live mean - reference mean) / reference std``, i.e. how many reference standard deviations
  the average image has moved in feature space.

Alerts are per event, not per statistic: when statistics of a model version reach their thresholds,
one :class:`DriftAlert` lists them all (a brightness shift moves most features at once). The version
re-arms as a group, only after every statistic has fallen below ``rearm`` x threshold, so a drifting
window does not raise an alert on every evaluation, a score hovering at the threshold does not
flap, and a second feature crossing during the same event is part of it (the report shows it).
Nothing is scored until the window holds ``min_window`` observations: PSI of a small window is
biased upward by about (bins - 1) / n.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radflow.monitor.reference import INPUT_FEATURES, Reference, output_features

__all__ = [
    "DriftAlert",
    "DriftMonitor",
    "DriftThresholds",
    "DriftTracker",
    "RingBuffer",
    "embedding_distance",
    "ks_test",
    "psi",
    "psi_counts",
]

_EPS = 1e-4


@dataclass(frozen=True)
class DriftThresholds:
    """When a score is drift (settings ``drift_*``)."""

    psi: float = 0.2
    """PSI at or above this alerts (0.1-0.2 is commonly read as moderate, above 0.2 as major shift)."""
    ks: float = 0.2
    """KS statistic (largest CDF gap) at or above this alerts; a gap, unlike a p-value, does not shrink with n."""
    embedding: float = 0.5
    """Standardized mean distance of the embedding at or above this alerts (half a reference std)."""
    min_window: int = 100
    """Observations needed before anything is scored."""
    rearm: float = 0.8
    """An alerting statistic re-arms once it falls below rearm x threshold."""

    def of(self, statistic: str) -> float:
        return {"psi": self.psi, "ks": self.ks, "mean_distance": self.embedding}[statistic]

    def to_dict(self) -> dict[str, float]:
        return {
            "psi": self.psi,
            "ks": self.ks,
            "embedding": self.embedding,
            "min_window": self.min_window,
            "rearm": self.rearm,
        }


def psi_counts(expected: np.ndarray | list[float], actual: np.ndarray | list[float]) -> float:
    """PSI between reference bin probabilities and live bin counts (or probabilities)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.size == 0:
        raise ValueError(f"PSI needs bins of the same shape, got {e.shape} and {a.shape}.")
    e = np.clip(e / e.sum(), _EPS, None)
    a = np.clip(a / max(a.sum(), 1e-12), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(edges: list[float] | np.ndarray, expected: list[float] | np.ndarray, live: np.ndarray) -> float:
    """PSI of ``live`` values over the reference bins ``edges`` with reference probabilities ``expected``."""
    inner = np.asarray(edges, dtype=np.float64)
    counts = np.bincount(
        np.searchsorted(inner, np.asarray(live, dtype=np.float64), side="right"), minlength=len(inner) + 1
    )
    return psi_counts(expected, counts)


def ks_test(reference: np.ndarray | list[float], live: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample Kolmogorov-Smirnov test (asymptotic p-value: the exact one
    costs milliseconds per feature at window sizes, and the alert is on the statistic anyway)."""
    from scipy import stats  # imported on first scoring, not at server start (it is slow to import)

    result = stats.ks_2samp(np.asarray(reference, dtype=np.float64), np.asarray(live, dtype=np.float64), method="asymp")
    return float(result.statistic), float(result.pvalue)


def embedding_distance(
    ref_mean: np.ndarray | list[float], ref_std: np.ndarray | list[float], live: np.ndarray
) -> float:
    """RMS over dimensions of the live mean's shift in reference standard deviations (dims with std 0 are skipped)."""
    mean = np.asarray(ref_mean, dtype=np.float64)
    std = np.asarray(ref_std, dtype=np.float64)
    rows = np.asarray(live, dtype=np.float64)
    keep = std > 1e-8 * max(1.0, float(np.abs(mean).max(initial=0.0)))
    if not keep.any() or rows.size == 0:
        return 0.0
    z = (rows.mean(axis=0)[keep] - mean[keep]) / std[keep]
    return float(np.sqrt(np.mean(z**2)))


class RingBuffer:
    """The last ``capacity`` rows of a fixed width, preallocated: appending never allocates."""

    def __init__(self, capacity: int, width: int):
        self._data = np.zeros((capacity, width), dtype=np.float64)
        self._next = 0
        self.count = 0

    @property
    def capacity(self) -> int:
        return int(self._data.shape[0])

    def append(self, row: np.ndarray) -> None:
        self._data[self._next] = row
        self._next = (self._next + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def values(self) -> np.ndarray:
        """A copy of the rows held, oldest first."""
        if self.count < self.capacity:
            return self._data[: self.count].copy()
        return np.concatenate([self._data[self._next :], self._data[: self._next]])


@dataclass
class DriftAlert:
    """One drift event of a model version: every statistic that crossed its threshold in one window.

    A brightness shift moves most features at once; it is one event with one alert listing them,
    not one alert per statistic. ``feature``/``statistic``/``score``/``threshold`` are the event's
    first crossing (in report order: inputs, outputs, embedding, view), for a single-valued column or label.
    """

    model: str
    version: str
    crossings: list[dict[str, Any]]
    """``{"feature", "statistic", "score", "threshold"}`` per crossed statistic, in report order."""
    window: int

    def __post_init__(self) -> None:
        if not self.crossings:
            raise ValueError("a drift alert needs at least one crossed statistic.")

    @property
    def features(self) -> list[str]:
        """The features that drifted, each once, in report order."""
        return list(dict.fromkeys(c["feature"] for c in self.crossings))

    @property
    def feature(self) -> str:
        return str(self.crossings[0]["feature"])

    @property
    def statistic(self) -> str:
        return str(self.crossings[0]["statistic"])

    @property
    def score(self) -> float:
        return float(self.crossings[0]["score"])

    @property
    def threshold(self) -> float:
        return float(self.crossings[0]["threshold"])

    @property
    def message(self) -> str:
        parts = []
        for name in self.features:
            scores = ", ".join(
                f"{c['statistic']} {c['score']:.3f} >= {c['threshold']:g}"
                for c in self.crossings
                if c["feature"] == name
            )
            parts.append(f"{name} ({scores})")
        count = len(self.features)
        return (
            f"{self.model} v{self.version}: drift in {count} feature{'s' if count != 1 else ''} over the last "
            f"{self.window} predictions: {'; '.join(parts)}."
        )

    @property
    def details(self) -> dict[str, Any]:
        """What a stored alert row keeps beyond its columns: the window and every crossing."""
        return {"window": self.window, "features": self.features, "crossings": self.crossings}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "drift",
            "model": self.model,
            "version": self.version,
            "feature": self.feature,
            "statistic": self.statistic,
            "score": self.score,
            "threshold": self.threshold,
            "features": self.features,
            "crossings": self.crossings,
            "window": self.window,
            "message": self.message,
        }


@dataclass
class DriftMonitor:
    """One model version's window and alert state."""

    model: str
    version: str
    reference: Reference | None
    reason: str | None = None
    """Why there is no reference (shown instead of scores)."""
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    capacity: int = 500

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ref = self.reference
        if ref is not None:
            labels = list(ref.model.get("labels") or [])
            self.outputs = [f for f in output_features(labels, str(ref.model.get("task", ""))) if f in ref.numeric]
        else:
            self.outputs = []
        width = len(INPUT_FEATURES) + len(self.outputs)
        self.embedding_dim = ref.embedding.dim if ref is not None and ref.embedding is not None else 0
        self._rows = RingBuffer(self.capacity, width)
        self._emb = RingBuffer(self.capacity, self.embedding_dim) if self.embedding_dim else None
        self._views: list[str] = []
        self._event_open = False
        """A drift event was alerted and has not ended: some statistic is still at or above rearm x threshold."""
        self.observed = 0
        self.last: dict[str, Any] | None = None
        self._scored_at = -1

    def observe(self, inputs: np.ndarray, outputs: np.ndarray, embedding: np.ndarray | None, view: str = "") -> None:
        """Add one served image: its input summary, output scores and embedding (skipped when shapes differ)."""
        if self.reference is None:
            with self._lock:
                self.observed += 1
            return
        out = np.asarray(outputs, dtype=np.float64).ravel()
        if out.size != len(self.outputs):
            return
        row = np.concatenate([np.asarray(inputs, dtype=np.float64).ravel(), out])
        with self._lock:
            self.observed += 1
            self._rows.append(row)
            if self._emb is not None and embedding is not None and np.size(embedding) == self.embedding_dim:
                self._emb.append(np.asarray(embedding, dtype=np.float64).ravel())
            if view:
                self._views.append(view)
                if len(self._views) > 2 * self.capacity:
                    del self._views[: self.capacity]

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        with self._lock:
            rows = self._rows.values()
            emb = self._emb.values() if self._emb is not None else None
            views = self._views[-self.capacity :]
        return rows, emb, views

    def _scores(self, rows: np.ndarray, emb: np.ndarray | None, views: list[str]) -> list[dict[str, Any]]:
        ref = self.reference
        assert ref is not None
        out: list[dict[str, Any]] = []

        def add(feature: str, group: str, statistic: str, score: float, **extra: Any) -> None:
            threshold = self.thresholds.of(statistic)
            score = round(score, 6) if math.isfinite(score) else 0.0
            out.append(
                {
                    "feature": feature,
                    "group": group,
                    "statistic": statistic,
                    "score": score,
                    "threshold": threshold,
                    "alert": score >= threshold,
                    **extra,
                }
            )

        for i, feature in enumerate([*INPUT_FEATURES, *self.outputs]):
            prof = ref.numeric.get(feature)
            if prof is None:
                continue
            live = rows[:, i]
            # undefined values (a segmentation confidence on an image whose mask is empty) are left out,
            # as the reference left them out; too few defined ones: nothing to compare yet
            live = live[np.isfinite(live)]
            if len(live) < self.thresholds.min_window:
                continue
            group = ref.groups.get(feature, "input")
            add(feature, group, "psi", psi(prof.edges, prof.probs, live))
            stat, pvalue = ks_test(prof.sample, live)
            add(feature, group, "ks", stat, pvalue=round(pvalue, 6), live_mean=round(float(live.mean()), 6))
        if ref.embedding is not None and emb is not None and len(emb) >= self.thresholds.min_window:
            add(
                "embedding",
                "output",
                "mean_distance",
                embedding_distance(ref.embedding.mean, ref.embedding.std, emb),
                source=ref.embedding.source,
            )
        expected = ref.categorical.get("view")
        if expected and len(views) >= self.thresholds.min_window:
            cats = sorted(set(expected) | set(views))
            counts = [float(views.count(c)) for c in cats]
            add("view", "input", "psi", psi_counts([expected.get(c, 0.0) for c in cats], counts))
        return out

    def evaluate(self) -> tuple[dict[str, Any], list[DriftAlert]]:
        """(report, alerts newly raised) for the current window; see the module docstring.

        An unchanged window (no traffic since the last call) is not scored again.
        """
        if self.last is not None and self._scored_at == self.observed:
            return self.last, []
        self._scored_at = self.observed
        base: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "thresholds": self.thresholds.to_dict(),
            "observed": self.observed,
        }
        if self.reference is None:
            report = {**base, "status": "no_reference", "reason": self.reason, "window": {"size": 0}, "scores": []}
            self.last = report
            return report, []
        rows, emb, views = self._snapshot()
        window = {"size": len(rows), "capacity": self.capacity, "min": self.thresholds.min_window}
        if len(rows) < self.thresholds.min_window:
            report = {**base, "status": "collecting", "reason": None, "window": window, "scores": [], "alert": False}
            self.last = report
            return report, []
        scores = self._scores(rows, emb, views)
        raised: list[DriftAlert] = []
        crossed = [s for s in scores if s["alert"]]
        with self._lock:
            if crossed and not self._event_open:
                self._event_open = True
                keys = ("feature", "statistic", "score", "threshold")
                raised.append(
                    DriftAlert(self.model, self.version, [{k: c[k] for k in keys} for c in crossed], len(rows))
                )
            elif self._event_open and all(s["score"] < self.thresholds.rearm * s["threshold"] for s in scores):
                self._event_open = False
        alert = any(s["alert"] for s in scores)
        report = {
            **base,
            "status": "alert" if alert else "ok",
            "reason": None,
            "window": window,
            "scores": scores,
            "alert": alert,
        }
        self.last = report
        return report, raised


class DriftTracker:
    """The monitors of every model version this server has served, keyed by (model, version)."""

    def __init__(self, thresholds: DriftThresholds | None = None, capacity: int = 500):
        self.thresholds = thresholds or DriftThresholds()
        self.capacity = capacity
        self._monitors: dict[tuple[str, str], DriftMonitor] = {}
        self._lock = threading.Lock()

    def register(
        self, model: str, version: str, reference: Reference | None, reason: str | None = None
    ) -> DriftMonitor:
        """The monitor of ``model`` ``version``, made on first sight (a reload of the same version keeps its window)."""
        with self._lock:
            monitor = self._monitors.get((model, version))
            if monitor is None or (monitor.reference is None and reference is not None):
                monitor = DriftMonitor(model, version, reference, reason, self.thresholds, self.capacity)
                self._monitors[(model, version)] = monitor
            return monitor

    def get(self, model: str, version: str) -> DriftMonitor | None:
        return self._monitors.get((model, version))

    def monitors(self) -> list[DriftMonitor]:
        with self._lock:
            return list(self._monitors.values())

    def evaluate(self) -> tuple[dict[str, Any], list[DriftAlert]]:
        """({"MODEL/VERSION": report}, alerts newly raised) over all monitors."""
        reports: dict[str, Any] = {}
        raised: list[DriftAlert] = []
        for monitor in self.monitors():
            report, new = monitor.evaluate()
            reports[f"{monitor.model}/{monitor.version}"] = report
            raised.extend(new)
        return reports, raised
