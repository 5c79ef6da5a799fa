"""The one inference core every door calls: decode -> route -> batch -> log -> metrics -> drift.

:class:`InferenceService` owns the loaded models (champion, challenger, shadow), their dynamic
batchers, the prediction store and the drift windows. The HTTP transports (:mod:`radflow.serve`),
the web UI (:mod:`radflow.ui`) and the streaming and DICOM doors are thin layers over it, so a
request scored through any of them is logged, metered and monitored the same way. Nothing here
imports torch or a web framework.
"""

from __future__ import annotations

from radflow.inference.service import InferenceService
from radflow.inference.settings import ServeSettings

__all__ = ["InferenceService", "ServeSettings"]
