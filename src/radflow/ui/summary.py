"""JSON the web UI needs that the service API does not give directly: recent predictions with their
feedback, online accuracy per model version, a metrics snapshot and the registry's versions.

These are read-only views over the service's store (:mod:`radflow.store`), Prometheus registry and
MLflow registry; the pages poll them, so each is one or two small queries.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from typing import Any

from radflow.store import Store, prediction_counts
from radflow.store import recent_predictions as store_recent_predictions

__all__ = [
    "PREDICT_ENDPOINTS",
    "REPORT_ARTIFACT",
    "evaluation_report",
    "feedback_stats",
    "histogram_quantile",
    "metrics_snapshot",
    "recent_predictions",
    "registry_versions",
]

PREDICT_ENDPOINTS = ("/v1/predict",)
"""Endpoints counted as inference traffic (plus every V2 ``.../infer``); UI polling is not traffic."""
_FEEDBACK_SHOWN = ("count", "labels", "value", "correct", "reader", "comment", "created_at")


def _is_predict(endpoint: str) -> bool:
    return endpoint in PREDICT_ENDPOINTS or endpoint.endswith("/infer")


def recent_predictions(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The newest answered (non-shadow) predictions, newest first, each with its latest feedback or None."""
    out = []
    for row in store_recent_predictions(store, max(1, min(limit, 500))):
        feedback = row["feedback"]
        out.append(
            {
                "id": row["id"],
                "created_at": row["created_at"],
                "model": {"name": row["model_name"], "version": row["model_version"], "alias": row["model_alias"]},
                "arm": row["arm"],
                "input_format": row["input_format"],
                "latency_ms": row["latency_ms"],
                "outputs": row["outputs"],
                "feedback": None if feedback is None else {k: feedback[k] for k in _FEEDBACK_SHOWN},
            }
        )
    return out


def feedback_stats(store: Store) -> list[dict[str, Any]]:
    """Per model version: predictions answered, predictions with feedback, and online accuracy from feedback.

    ``accuracy`` is the share of whole-prediction verdicts that said correct; ``label_agreement`` the
    share of per-label answers matching the model's decision at its threshold; ``auroc`` the mean
    per-label AUROC of the probabilities against readers' labels (labels with both classes only);
    ``mae`` the mean absolute error against readers' estimates (regression); ``dice`` the mean Dice of the
    served masks against readers' corrected masks (segmentation); ``map50`` the mean AP at IoU 0.5 of the
    served boxes against readers' corrected boxes (detection). Each is None until
    there is feedback to compute it from. All feedback counts (no window, no intervals: the page
    polls this); the same join and metrics as the monitoring report (:mod:`radflow.monitor.online`).
    """
    # Imported here: the metrics pull in scikit-learn (seconds), which server start-up need not wait for.
    from radflow.monitor.online import group_rows
    from radflow.monitor.online_metrics import group_metrics
    from radflow.store import labelled_predictions

    predictions = {(k.model, k.version, k.arm): n for k, n in prediction_counts(store).items()}
    groups = group_rows(r for r in labelled_predictions(store, siblings=False) if not r.key.shadow)
    metrics = {(k.model, k.version, k.arm): group_metrics(rows, n_bootstrap=0) for k, rows in groups.items()}
    labelled = {(k.model, k.version, k.arm): len(rows) for k, rows in groups.items()}
    out = []
    for key in sorted(predictions.keys() | metrics.keys()):
        m = metrics.get(key) or {"verdicts": None, "classification": None, "regression": None}
        verdicts, clf, reg = m["verdicts"] or {}, m["classification"] or {}, m["regression"] or {}
        n_verdicts, correct = verdicts.get("n", 0), verdicts.get("correct", 0)
        judgements, agreements = clf.get("label_judgements", 0), clf.get("label_agreements", 0)
        out.append(
            {
                "model": key[0],
                "version": key[1],
                "arm": key[2],
                "predictions": predictions.get(key, 0),
                "with_feedback": labelled.get(key, 0),
                "verdicts": n_verdicts,
                "correct": correct,
                "label_judgements": judgements,
                "label_agreements": agreements,
                "accuracy": correct / n_verdicts if n_verdicts else None,
                "label_agreement": agreements / judgements if judgements else None,
                "auroc": (clf.get("macro") or {}).get("auroc"),
                "mae": reg.get("mae"),
                "dice": (m.get("segmentation") or {}).get("mean_dice"),
                "map50": (m.get("detection") or {}).get("map50"),
            }
        )
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style quantile from cumulative ``(upper_bound, count)`` buckets (linear within a bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: the best honest answer is that bound
            width = count - below
            return lower + (upper - lower) * ((rank - below) / width if width else 1.0)
        lower, below = upper, count
    return lower


def _add_buckets(into: dict[float, float], le: str, value: float) -> None:
    bound = float(le)
    into[bound] = into.get(bound, 0.0) + value


def metrics_snapshot(text: str) -> dict[str, Any]:
    """Cumulative inference counters from the service's Prometheus text, summed over models.

    The dashboard turns two snapshots into rates and windowed quantiles; the lifetime p50/p95 are
    included for a first paint.
    """
    from prometheus_client.parser import text_string_to_metric_families

    requests = 0.0
    errors = 0.0
    by_arm: dict[str, float] = defaultdict(float)
    latency: dict[float, float] = {}
    latency_sum = 0.0
    batch: dict[float, float] = {}
    batch_sum = 0.0
    rejected: dict[str, float] = defaultdict(float)
    in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "radflow_requests_total" and _is_predict(labels.get("endpoint", "")):
                requests += s.value
                if labels.get("status", "").startswith(("4", "5")):
                    errors += s.value
                if labels.get("arm"):
                    by_arm[labels["arm"]] += s.value
            elif s.name == "radflow_request_latency_seconds_bucket" and _is_predict(labels.get("endpoint", "")):
                _add_buckets(latency, labels["le"], s.value)
            elif s.name == "radflow_request_latency_seconds_sum" and _is_predict(labels.get("endpoint", "")):
                latency_sum += s.value
            elif s.name == "radflow_batch_size_bucket":
                _add_buckets(batch, labels["le"], s.value)
            elif s.name == "radflow_batch_size_sum":
                batch_sum += s.value
            elif s.name == "radflow_rejected_total":
                rejected[labels.get("reason", "other")] += s.value
            elif s.name == "radflow_requests_in_flight":
                in_flight = s.value
    latency_buckets = sorted(latency.items())
    batch_buckets = sorted(batch.items())
    batch_count = batch_buckets[-1][1] if batch_buckets else 0.0
    p50, p95 = histogram_quantile(latency_buckets, 0.5), histogram_quantile(latency_buckets, 0.95)

    def finite(buckets: list[tuple[float, float]]) -> list[list[float | None]]:
        # JSON has no Infinity; the +Inf bound travels as null.
        return [[None if math.isinf(b) else b, c] for b, c in buckets]

    return {
        "requests": requests,
        "errors": errors,
        "by_arm": dict(by_arm),
        "latency_buckets": finite(latency_buckets),
        "latency_sum": latency_sum,
        "latency_p50_ms": None if p50 is None else p50 * 1000,
        "latency_p95_ms": None if p95 is None else p95 * 1000,
        "batch_buckets": finite(batch_buckets),
        "batches": batch_count,
        "batch_sum": batch_sum,
        "mean_batch_size": batch_sum / batch_count if batch_count else None,
        "rejected": dict(rejected),
        "in_flight": in_flight,
    }


_SHOWN_TAGS = ("test_", "radflow.dataset_version", "radflow.git_commit", "radflow.task", "gate")


def registry_versions(name: str, tracking_uri: str | None) -> dict[str, Any]:
    """The registered versions of ``name`` with aliases, headline metrics and lineage tags, newest first."""
    from radflow.tracking import client, resolve_tracking_uri

    mlflow_client = client(resolve_tracking_uri(tracking_uri))
    model = mlflow_client.get_registered_model(name)
    aliases: dict[str, list[str]] = defaultdict(list)
    for alias, version in (model.aliases or {}).items():
        aliases[str(version)].append(alias)
    versions: list[dict[str, Any]] = []
    for mv in mlflow_client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        versions.append(
            {
                "version": str(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "created_at": mv.creation_timestamp,
                "tags": {k: v for k, v in sorted(tags.items()) if k.startswith(_SHOWN_TAGS)},
                "report_url": report_url(str(mv.version)),
            }
        )
    versions.sort(key=lambda v: int(v["version"]) if str(v["version"]).isdigit() else 0, reverse=True)
    return {"name": name, "versions": versions}


REPORT_ARTIFACT = "evaluation/report.html"
"""The evaluation's HTML report, logged in the run a registered version was made from."""
REPORT_CACHE_S = 300.0
"""Seconds a fetched report is served without asking MLflow again (a re-evaluation of the run shows after that)."""
_reports: dict[tuple[str, str], tuple[float, bytes]] = {}
_reports_lock = threading.Lock()


def report_url(version: str) -> str:
    """The dashboard's route to a registered version's evaluation report."""
    return f"/v1/ui/registry/versions/{version}/report.html"  # the route's {model_version}


def evaluation_report(name: str, version: str, tracking_uri: str | None) -> bytes:
    """The HTML evaluation report of registered ``name`` ``version``, from its run's ``evaluation/report.html``.

    Resolved by one registry read (:func:`radflow.modelref.resolve_model_ref`) and downloaded into the run's
    model cache; kept in memory for :data:`REPORT_CACHE_S`. NotFoundError (404) for an unknown version or a
    run without a report, saying which run and how to make one.
    """
    from radflow.errors import NotFoundError
    from radflow.modelref import ArtifactNotFoundError, model_uri, resolve_model_ref
    from radflow.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    key = (uri, model_uri(name, version=version))
    with _reports_lock:
        cached = _reports.get(key)
    if cached is not None and time.monotonic() - cached[0] < REPORT_CACHE_S:
        return cached[1]
    resolved = resolve_model_ref(key[1], uri)
    try:
        body = resolved.download(REPORT_ARTIFACT).read_bytes()
    except ArtifactNotFoundError:
        raise NotFoundError(
            f"{name} version {version} has no evaluation report: its run {resolved.run_id} has no {REPORT_ARTIFACT} "
            f"artifact (evaluations logged before reports were written have none; `radflow evaluate runs:/"
            f"{resolved.run_id}` logs one)."
        ) from None
    with _reports_lock:
        _reports[key] = (time.monotonic(), body)
    return body
