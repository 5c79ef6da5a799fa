"""Run the service under uvicorn in this process: what ``radflow serve`` and ``radflow demo`` both do.

Models load before the socket opens, so a bad model URI is a clear error instead of a server that
never gets ready. ``on_ready(url)`` runs in a background thread once ``/v2/health/ready`` answers —
the demo starts its simulated clinic there. SIGTERM and Ctrl-C stop accepting, answer what is in
flight and flush the prediction log (uvicorn's graceful shutdown, then the app's lifespan).

``workers > 1`` (``radflow serve --workers N``): N processes accept on one socket bound by the parent
(uvicorn's multiprocess supervisor: a worker that dies is replaced, SIGHUP replaces them one by one, so
a promoted champion is picked up without a gap; SIGTERM drains each as above). Each worker builds its
own app from the same settings (:func:`worker_app`), so hot swap, drain and feedback durability hold
per process. They share one store, which must be a database server: a SQLite file is refused (one
writer at a time across processes, and a file on one host). The store is migrated and the models
loaded once in the parent first, so a bad URI is still one clear error. Metrics go through
prometheus-client's multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR`` per server,
:mod:`radflow.inference.metrics`); a dead worker's live gauges are dropped (``mark_process_dead``).
Routing stays sticky across processes: an arm is a function of the routing key's hash and the weight.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from radflow.errors import ConfigError
from radflow.hardware import available_cores, free_port, port_is_free
from radflow.inference.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "WORKER_SETTINGS_ENV",
    "check_replicable",
    "free_port",
    "per_worker",
    "port_is_free",
    "run_server",
    "wait_ready",
    "worker_app",
]

WORKER_SETTINGS_ENV = "RADFLOW_WORKER_SETTINGS"
"""The settings a worker process of ``--workers N`` builds its app from (JSON, set by the parent)."""

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


def check_replicable(settings: ServeSettings, workers: int) -> None:
    """Refuse ``workers`` > 1 over a store the processes cannot share (a SQLite file)."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}.")
    url = settings.resolved_store_url()
    if workers > 1 and url.startswith("sqlite"):
        raise ConfigError(
            f"--workers {workers} needs a store the processes share: the store is the SQLite file {url}. "
            "Use PostgreSQL: --store-url postgresql+psycopg://USER@HOST/DB (or RADFLOW_STORE_URL), or --workers 1."
        )


def per_worker(settings: ServeSettings, workers: int) -> ServeSettings:
    """The settings each of ``workers`` processes serves with: the cores shared out among them.

    ONNX Runtime's threads default to every core in each process; ``workers`` processes would each start
    that many, and contend for the cores. Unless ``threads`` is set (``serve.threads``, RADFLOW_THREADS),
    each worker's models run on ``cores // workers`` threads (at least one). On 2 cores, ``--workers 2``
    with one thread each served a workflow at 209 img/s where two threads each gave 135 (bench/workflow.py).
    """
    if workers <= 1 or settings.threads is not None:
        return settings
    return settings.model_copy(update={"threads": max(1, available_cores() // workers)})


def worker_app() -> FastAPI:
    """The app of one worker process of ``--workers N`` (a uvicorn factory): the parent's settings, its own service."""
    from radflow.serve.app import create_app

    return create_app(ServeSettings(**json.loads(os.environ[WORKER_SETTINGS_ENV])))


def _settings_json(settings: ServeSettings) -> str:
    values: dict[str, Any] = settings.model_dump(mode="json", exclude_none=True)
    if settings.admin_token is not None:
        values["admin_token"] = settings.admin_token.get_secret_value()  # dumped masked otherwise
    return json.dumps(values)


def run_server(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
    on_exit: Callable[[], None] | None = None,
    workers: int = 1,
) -> None:
    """Load the models, then serve until SIGTERM/SIGINT (blocking); ``workers`` processes behind the port.

    ``on_exit`` runs in the signal handler, before the server stops accepting: it must not block
    (the demo uses it to stop its simulated clinic from sending into a closing socket).
    """
    import uvicorn

    from radflow.inference.service import preload
    from radflow.serve.app import create_app

    check_replicable(settings, workers)
    models = preload(settings)
    if on_ready is not None:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        threading.Thread(target=_notify_when_ready, args=(url, on_ready), daemon=True, name="radflow-ready").start()
    if workers > 1:
        del models  # each worker loads its own copy
        _run_workers(per_worker(settings, workers), host, port, log_level, workers, on_exit)
        return
    app = create_app(settings, models)
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


def _run_workers(
    settings: ServeSettings, host: str, port: int, log_level: str, workers: int, on_exit: Callable[[], None] | None
) -> None:
    import uvicorn
    from prometheus_client import multiprocess
    from uvicorn.supervisors import Multiprocess

    from radflow.inference.metrics import MULTIPROC_ENV
    from radflow.store import Store

    # migrated once here: N workers opening a fresh database at once would race to create its tables
    Store(settings.resolved_store_url(), None).close()
    metrics_dir = tempfile.mkdtemp(prefix="radflow-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # read by the workers' prometheus-client at import
    os.environ[WORKER_SETTINGS_ENV] = _settings_json(settings)
    config = uvicorn.Config(
        "radflow.serve.server:worker_app",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        workers=workers,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )

    class _Supervisor(Multiprocess):
        def _pids(self) -> set[int]:
            return {p.pid for p in self.processes if p.pid is not None}

        def _reap(self, before: set[int]) -> None:
            for pid in before - self._pids():
                multiprocess.mark_process_dead(pid, metrics_dir)

        def keep_subprocess_alive(self) -> None:
            before = self._pids()
            super().keep_subprocess_alive()
            self._reap(before)

        def restart_all(self) -> None:
            before = self._pids()
            super().restart_all()
            self._reap(before)

        def _stop(self) -> None:
            if on_exit is not None and not self.should_exit.is_set():
                on_exit()

        def handle_term(self) -> None:
            self._stop()
            super().handle_term()

        def handle_int(self) -> None:
            self._stop()
            super().handle_int()

    try:
        _Supervisor(config, sockets=[config.bind_socket()]).run()
    finally:
        os.environ.pop(WORKER_SETTINGS_ENV, None)
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
