"""The DICOM door: a pynetdicom node that receives studies, assembles them and scores them through the inference core.

:mod:`~radflow.gateway.node` is the DICOM transport (C-ECHO, C-STORE, calling-AE checks, the
failure statuses), :mod:`~radflow.gateway.assembly` groups instances into studies until they are
stable, :mod:`~radflow.gateway.routing` decides which model a series goes to, and
:mod:`~radflow.gateway.app` ties them to :class:`radflow.inference.InferenceService`, the one
inference path every door shares. Nothing identifying leaves the process: studies are known by a
hash of their Study Instance UID, and the store keeps the de-identified pixels only.
"""

from __future__ import annotations

from radflow.gateway.app import Gateway, study_hash
from radflow.gateway.routing import Rule, SeriesInfo, load_rules, route
from radflow.gateway.settings import GatewaySettings

__all__ = ["Gateway", "GatewaySettings", "Rule", "SeriesInfo", "load_rules", "route", "study_hash"]
