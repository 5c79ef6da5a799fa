"""The service app with the UI router, under a real uvicorn server on a free loopback port (in a thread)."""

from __future__ import annotations

import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from radflow.inference import ServeSettings
from radflow.inference.service import InferenceService
from radflow.serve import create_app
from tests.serve.server import free_port, wait_ready

__all__ = ["UiServer", "ui_app"]


def ui_app(settings: ServeSettings) -> tuple[FastAPI, InferenceService]:
    """The app ``radflow serve`` runs (the UI is part of it) and its service."""
    app = create_app(settings)
    service: InferenceService = app.state.service
    return app, service


class UiServer:
    """Uvicorn serving the UI app on 127.0.0.1; :meth:`start` waits until the models are loaded."""

    def __init__(self, model: Path, root: Path, admin_token: str | None = "ui-test-token", **extra: object):
        settings = ServeSettings(
            model=str(model),
            store_url=f"sqlite:///{root / 'serving.db'}",
            admin_token=SecretStr(admin_token) if admin_token else None,
            threads=1,
            **extra,  # type: ignore[arg-type]
        )
        self.app, self.service = ui_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 30) -> UiServer:
        self._thread.start()
        if wait_ready(self.url, timeout, alive=self._thread.is_alive):
            return self
        self.stop()
        raise RuntimeError(f"the UI server did not get ready in {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
