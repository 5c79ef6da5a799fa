"""The HTTP doors of the inference core: ``/v1`` images, ``/v2`` Open Inference Protocol, admin, the web UI.

``radflow serve`` runs :func:`create_app` under uvicorn (:mod:`radflow.serve.server`). Each
transport module only parses its protocol and calls :class:`radflow.inference.InferenceService`.
Nothing here imports torch.
"""

from __future__ import annotations

from radflow.serve.app import create_app

__all__ = ["create_app"]
