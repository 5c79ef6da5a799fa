"""Monitoring of served models: reference profiles, drift against them, online evaluation from feedback.

Torch-free (the server imports it). :mod:`radflow.monitor.online` is imported where it is used.
"""

from __future__ import annotations

from radflow.monitor.drift import DriftAlert, DriftMonitor, DriftThresholds, DriftTracker
from radflow.monitor.reference import REFERENCE_FILE, Reference, compute_reference, load_reference, write_reference

__all__ = [
    "REFERENCE_FILE",
    "DriftAlert",
    "DriftMonitor",
    "DriftThresholds",
    "DriftTracker",
    "Reference",
    "compute_reference",
    "load_reference",
    "write_reference",
]
