"""The real server's lifecycle: feedback survives SIGKILL; SIGTERM drains in-flight requests; hot swaps fail none."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from radflow.store import Store
from tests.serve.models import make_onnx, png_bytes
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("life-model"), seed=0)


def _server(model: Path, root: Path, env: dict[str, str] | None = None) -> ServerProcess:
    args = ["--model", str(model), "--store-url", f"sqlite:///{root / 'serving.db'}", "--log-level", "warning"]
    return ServerProcess(args, env=env, log=root / "server.log")


def test_every_acknowledged_feedback_survives_sigkill(model_path: Path, tmp_path: Path) -> None:
    server = _server(model_path, tmp_path).start()
    try:
        ids = [httpx.post(f"{server.url}/v1/predict", content=png_bytes(i)).json()["id"] for i in range(4)]
        acked: list[int] = []
        stop = threading.Event()

        def reader(n: int) -> None:
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    try:
                        answer = client.post(
                            f"{server.url}/v1/feedback",
                            json={"prediction_id": ids[n], "correct": True, "reader": f"r{n}"},
                        )
                    except httpx.HTTPError:
                        return  # the server was killed mid-request: not acknowledged
                    if answer.status_code == 201:
                        acked.append(answer.json()["id"])

        with ThreadPoolExecutor(4) as pool:
            for n in range(4):
                pool.submit(reader, n)
            while len(acked) < 30:
                time.sleep(0.005)
            server.kill()  # SIGKILL while feedback is in flight
            stop.set()
    finally:
        server.kill()
    store = Store(f"sqlite:///{tmp_path / 'serving.db'}")
    try:
        stored = {row["id"] for row in store.feedback()}
    finally:
        store.close()
    assert set(acked) <= stored and len(acked) >= 30
    restarted = _server(model_path, tmp_path).start()
    try:
        assert httpx.get(f"{restarted.url}/v1/predictions/{ids[0]}").status_code == 200
        again = httpx.post(f"{restarted.url}/v1/feedback", json={"prediction_id": ids[1], "correct": False})
        assert again.status_code == 201 and again.json()["id"] > max(acked)
    finally:
        restarted.kill()


def _in_flight(url: str) -> float:
    """The server's ``radflow_requests_in_flight`` gauge (this request included)."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("radflow_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no radflow_requests_in_flight in /metrics")


def test_sigterm_answers_in_flight_requests_and_flushes_the_log(model_path: Path, tmp_path: Path) -> None:
    # A 2 s batching window keeps the requests in flight when SIGTERM arrives; SIGTERM is sent only once
    # the server counts all four in flight (a request still connecting when it lands is refused, rightly).
    server = _server(model_path, tmp_path, env={"RADFLOW_MAX_QUEUE_DELAY_MS": "2000"}).start()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(httpx.post, f"{server.url}/v1/predict", content=png_bytes(i), timeout=10) for i in range(4)
            ]
            deadline = time.monotonic() + 10
            while _in_flight(server.url) < 4 + 1 and time.monotonic() < deadline:  # + 1: the /metrics request
                time.sleep(0.02)
            code = server.terminate()
            answers = [f.result() for f in futures]
    finally:
        server.kill()
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert [a.status_code for a in answers] == [200] * 4
    store = Store(f"sqlite:///{tmp_path / 'serving.db'}")
    try:
        logged = {row["id"] for row in store.predictions()}
    finally:
        store.close()
    assert {a.json()["id"] for a in answers} <= logged


def test_hot_swaps_under_load_fail_no_request(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """8 clients send without pause while the champion is swapped back and forth three times: every answer is 200.

    Before, a request routed to the old model but still decoding when the swap drained it waited on a
    stopped batcher until the timeout (504), and the reload could answer queued requests with 503.
    """
    first, second = onnx_pair
    env = {"RADFLOW_REQUEST_TIMEOUT_S": "10", "RADFLOW_DRIFT": "false", "RADFLOW_ADMIN_TOKEN": "s3cret"}
    server = _server(first, tmp_path, env=env).start()
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                answer = http.post(f"{server.url}/v1/predict", content=png_bytes(n))
                model = answer.json().get("model", {}).get("name", "") if answer.status_code == 200 else answer.text
                answers.append((answer.status_code, model))

    swaps = []
    try:
        with ThreadPoolExecutor(8) as pool:
            clients = [pool.submit(client, n) for n in range(8)]
            try:
                for model in (second, first) * 3:  # three swap cycles
                    time.sleep(0.3)
                    body = {"model": str(model)}
                    swaps.append(httpx.post(f"{server.url}/admin/reload", json=body, headers=ADMIN, timeout=60))
                time.sleep(0.3)
            finally:
                stop.set()
            for future in clients:
                future.result()
    finally:
        server.kill()
    assert [s.status_code for s in swaps] == [200] * 6, swaps[-1].text
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) == {200}, f"{statuses}: {[m for s, m in answers if s != 200][:3]}"
    assert len(answers) > 50
    assert {m for _, m in answers} == {"multilabel-0", "multilabel-1"}
