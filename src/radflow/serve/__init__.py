"""The inference service: FastAPI + ONNX Runtime with dynamic batching, V2 protocol, A/B routing and a store.

``radflow serve`` runs :func:`create_app` under uvicorn. Nothing here imports torch.
"""

from __future__ import annotations

from radflow.serve.app import create_app
from radflow.serve.service import InferenceService
from radflow.serve.settings import ServeSettings
from radflow.serve.store import PredictionRecord, Store

__all__ = ["InferenceService", "PredictionRecord", "ServeSettings", "Store", "create_app"]
