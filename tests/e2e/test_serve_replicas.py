"""``radflow serve --workers 2`` on one port over one PostgreSQL store: shared store, summed metrics, a worker killed.

Which worker accepts a connection is the kernel's choice; the test makes it deterministic by stopping one
worker (SIGSTOP: it accepts nothing) while the other answers, then the other way round.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from radflow.store import Store
from tests.serve.models import make_onnx, png_bytes
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.e2e


def create_database(server_url: str, name: str) -> str:
    """A fresh database ``name`` on the PostgreSQL server of ``server_url``; its SQLAlchemy URL."""
    import psycopg

    dsn = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def replicas(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("replicas")
    store_url = create_database(postgres_url, "serve_replicas")
    model = make_onnx(root, seed=0)
    args = ["--model", str(model), "--store-url", store_url, "--workers", "2", "--log-level", "warning"]
    server = ServerProcess(args, log=root / "server.log").start()
    try:
        yield server, store_url
    finally:
        server.terminate()


def _workers(server: ServerProcess, n: int = 2, timeout: float = 30) -> list[psutil.Process]:
    """The serving processes under the parent (multiprocessing's own helpers left out), once ``n`` are ready."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        found = [
            p
            for p in psutil.Process(server.proc.pid).children()
            if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())
        ]
        if len(found) == n:
            return found
        assert time.monotonic() < deadline, f"{len(found)} worker processes, expected {n}"
        time.sleep(0.2)


def _predict_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("radflow_requests_total{") and 'endpoint="/v1/predict"' in line
    )


def test_two_workers_share_the_store_and_the_metrics(replicas: tuple[ServerProcess, str]) -> None:
    server, store_url = replicas
    a, b = _workers(server)
    before = _predict_count(server.url)
    a.suspend()  # only b accepts
    try:
        by_b = [httpx.post(f"{server.url}/v1/predict", content=png_bytes(i), timeout=10) for i in range(3)]
        assert all(r.status_code == 200 for r in by_b), [r.text for r in by_b]
        time.sleep(0.3)  # past b's log write window: the rows are committed
    finally:
        a.resume()
    b.suspend()  # only a answers now
    try:
        ids = [r.json()["id"] for r in by_b]
        assert httpx.get(f"{server.url}/v1/predictions/{ids[0]}", timeout=10).status_code == 200
        saved = httpx.post(f"{server.url}/v1/feedback", json={"prediction_id": ids[1], "correct": True}, timeout=10)
        assert saved.status_code == 201, saved.text
        by_a = httpx.post(f"{server.url}/v1/predict", content=png_bytes(9), timeout=10)
        assert by_a.status_code == 200
        # a answers /metrics with b's three predictions and its own one
        assert _predict_count(server.url) - before == 4
    finally:
        b.resume()
    with Store(store_url) as store:
        assert [f["prediction_id"] for f in store.feedback()] == [ids[1]]


def test_a_killed_worker_loses_no_acknowledged_feedback_and_the_other_keeps_serving(
    replicas: tuple[ServerProcess, str],
) -> None:
    server, store_url = replicas
    a, b = _workers(server)
    first = httpx.post(f"{server.url}/v1/predict", content=png_bytes(1), timeout=10).json()["id"]
    acked = []
    for n in range(6):
        answer = httpx.post(f"{server.url}/v1/feedback", json={"prediction_id": first, "correct": n % 2 == 0})
        assert answer.status_code == 201, answer.text
        acked.append(answer.json()["id"])
    os.kill(a.pid, signal.SIGKILL)
    a.wait(10)
    answers = [httpx.post(f"{server.url}/v1/predict", content=png_bytes(i), timeout=10) for i in range(5)]
    assert [r.status_code for r in answers] == [200] * 5
    with Store(store_url) as store:
        assert set(acked) <= {f["id"] for f in store.feedback()}
    replaced = _workers(server)  # the supervisor starts a new worker in the killed one's place
    assert b in replaced and a.pid not in {p.pid for p in replaced}
    assert httpx.get(f"{server.url}/metrics", timeout=5).status_code == 200


def test_workers_over_a_sqlite_store_are_refused() -> None:
    from radflow.errors import ConfigError
    from radflow.inference import ServeSettings
    from radflow.serve.server import check_replicable

    settings = ServeSettings(model="m.onnx", store_url="sqlite:///serving.db")
    check_replicable(settings, 1)
    with pytest.raises(ConfigError, match=r"--workers 2 needs a store the processes share.*postgresql"):
        check_replicable(settings, 2)


def test_workers_share_the_cores_out_unless_threads_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from radflow.inference import ServeSettings
    from radflow.serve import server

    monkeypatch.setattr(server, "available_cores", lambda: 8)
    settings = ServeSettings(model="m.onnx", store_url="postgresql+psycopg://u@h/db")
    assert server.per_worker(settings, 1).threads is None  # one process: ONNX Runtime's own default
    assert server.per_worker(settings, 2).threads == 4 and server.per_worker(settings, 3).threads == 2
    assert server.per_worker(settings, 16).threads == 1
    assert server.per_worker(settings.model_copy(update={"threads": 6}), 2).threads == 6  # set: kept
