"""Run the service under uvicorn in this process: what ``radflow serve`` and ``radflow demo`` both do.

Models load before the socket opens, so a bad model URI is a clear error instead of a server that
never gets ready. ``on_ready(url)`` runs in a background thread once ``/v2/health/ready`` answers —
the demo starts its simulated clinic there. SIGTERM and Ctrl-C stop accepting, answer what is in
flight and flush the prediction log (uvicorn's graceful shutdown, then the app's lifespan).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from types import FrameType

from radflow.hardware import free_port, port_is_free
from radflow.inference.settings import ServeSettings

__all__ = ["free_port", "port_is_free", "run_server", "wait_ready"]

GRACEFUL_SHUTDOWN_S = 30


def wait_ready(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True, interval_s: float = 0.05) -> bool:
    """Poll ``URL/v2/health/ready`` until it answers 200 (True), ``timeout_s`` passes or ``alive()`` turns False.

    The one readiness wait: the demo's simulated clinic, the simulator and the tests' servers use it.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url.rstrip('/')}/v2/health/ready", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    return False


def _notify_when_ready(url: str, on_ready: Callable[[str], None], timeout_s: float = 300) -> None:
    if wait_ready(url, timeout_s, interval_s=0.2):
        on_ready(url)


def run_server(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
    on_exit: Callable[[], None] | None = None,
) -> None:
    """Load the models, then serve until SIGTERM/SIGINT (blocking).

    ``on_exit`` runs in the signal handler, before the server stops accepting: it must not block
    (the demo uses it to stop its simulated clinic from sending into a closing socket).
    """
    import uvicorn

    from radflow.inference.service import preload
    from radflow.serve.app import create_app

    models = preload(settings)
    app = create_app(settings, models)
    if on_ready is not None:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        threading.Thread(target=_notify_when_ready, args=(url, on_ready), daemon=True, name="radflow-ready").start()
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if on_exit is not None and not self.should_exit:
                on_exit()
            super().handle_exit(sig, frame)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, re-raised by uvicorn once it has shut down
        _Server(config).run()
