"""The automatic rule: promote the challenger, or stop its canary, when the online comparison is clear.

:func:`decide` is pure (a report and a rule in, a suggestion out), so the service's periodic task and
the tests share it. The rule is off by default: promotion is a clinical decision a person normally takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radflow.errors import ConfigError, did_you_mean
from radflow.monitor.comparison import COMPARABLE_METRICS

__all__ = ["AutoRule", "decide"]

_DEFAULT_METRIC = {"classification": "macro_auroc", "regression": "mae"}


@dataclass(frozen=True)
class AutoRule:
    """When online evidence promotes the challenger or stops its canary (off unless ``enabled``)."""

    enabled: bool = False
    """Off by default: promotion is a clinical decision a person normally takes."""
    min_feedback: int = 200
    """Labelled predictions needed per arm (paired requests in shadow mode) before anything is decided."""
    metric: str | None = None
    """One of COMPARABLE_METRICS; None: ``macro_auroc`` for classification, ``mae`` for regression."""
    margin: float = 0.0
    """How far the CI of the gain must clear zero (in the metric's unit) to act."""
    rollback: bool = True
    """Stop a canary whose challenger is clearly worse (a shadow challenger affects no answer)."""

    def __post_init__(self) -> None:
        if self.metric is not None and self.metric not in COMPARABLE_METRICS:
            raise ConfigError(
                f"auto-rule metric {self.metric!r} is not one of {', '.join(COMPARABLE_METRICS)}."
                + did_you_mean(self.metric, COMPARABLE_METRICS)
            )
        if self.min_feedback < 1:
            raise ConfigError(f"auto-rule min_feedback must be at least 1, got {self.min_feedback}.")
        if self.margin < 0:
            raise ConfigError(f"auto-rule margin must be 0 or more, got {self.margin}.")


def decide(report: dict[str, Any], rule: AutoRule, *, challenger_version: str | None = None) -> dict[str, str] | None:
    """``{"action": "promote" | "rollback", "reason"}`` when the report's comparison is significant
    under ``rule``, else None (always None when the rule is disabled).

    Promote when the whole CI of the challenger's gain lies above ``margin``; roll back (stop the
    canary) when it lies below ``-margin`` and the challenger answers real requests.
    ``challenger_version`` (the version the router serves as challenger now) guards against acting
    on an earlier challenger's evidence: a comparison about another version decides nothing.
    """
    if not rule.enabled:
        return None
    comp = report.get("comparison")
    if not comp or comp.get("reason"):
        return None
    if challenger_version is not None and comp["challenger"]["version"] != challenger_version:
        return None
    metric = rule.metric or _DEFAULT_METRIC.get(comp.get("task") or "")
    entry = comp["metrics"].get(metric) if metric else None
    if entry is None or entry["difference_ci"] is None:
        return None
    n = min(entry["n_champion"], entry["n_challenger"])
    if n < rule.min_feedback:
        return None
    lo, hi = entry["difference_ci"]
    gain_lo, gain_hi = (lo, hi) if entry["higher_is_better"] else (-hi, -lo)
    a, b = comp["champion"], comp["challenger"]
    evidence = (
        f"{metric} {entry['challenger']} for challenger {b['model']} v{b['version']} vs {entry['champion']} for "
        f"champion {a['model']} v{a['version']}: difference {entry['difference']:+.4f}, "
        f"{report.get('ci', 0.95):.0%} CI [{lo:+.4f}, {hi:+.4f}] over {n} "
        + ("paired requests" if comp["paired"] else "labelled predictions per arm")
    )
    if gain_lo > rule.margin:
        return {"action": "promote", "reason": f"{evidence}; the challenger is better by more than {rule.margin}."}
    if rule.rollback and comp["mode"] == "canary" and gain_hi < -rule.margin:
        return {"action": "rollback", "reason": f"{evidence}; the canary is worse by more than {rule.margin}."}
    return None
