"""The inference core under faults: hot swap mid-request, admission at capacity, pixel bombs, slow decodes."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from radflow.data.preprocess import to_model_input
from radflow.inference import ServeSettings
from radflow.runtime.metadata import IMAGE_INPUT
from tests.serve.harness import AppHarness, metric_value
from tests.serve.models import make_onnx, png_bytes

TOKEN = {"Authorization": "Bearer s3cret"}


def _settings(onnx_pair: tuple[Path, ...], root: Path, **extra: Any) -> ServeSettings:
    return ServeSettings(
        model=str(onnx_pair[0]),
        store_url=f"sqlite:///{root / 'serving.db'}",
        admin_token=SecretStr("s3cret"),
        max_queue_delay_ms=1,
        request_timeout_s=5,
        store_inputs=False,
        drift=False,
        **extra,
    )


@pytest.fixture
def harness(onnx_pair: tuple[Path, Path], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AppHarness]:
    app = AppHarness(_settings(onnx_pair, tmp_path, **getattr(request, "param", {})))
    yield app
    app.close()


class HeldDecode:
    """Wraps the service's decode step: uploads equal to ``held`` wait in it until :meth:`release`."""

    def __init__(self, app: AppHarness, held: bytes, inside_gate: bool = False):
        self.held = held
        self.entered = threading.Semaphore(0)
        self._go = threading.Event()
        service = app.service
        original: Callable[..., Any] = service._prepare

        def prepare(data: bytes, arms: list[Any]) -> Any:
            if data == self.held:
                if inside_gate and service.gate is not None:
                    with service.gate.shared():  # a slow decode holding the CPU gate
                        self.entered.release()
                        self._go.wait(20)
                else:
                    self.entered.release()
                    self._go.wait(20)
            return original(data, arms)

        service._prepare = prepare  # type: ignore[method-assign]

    async def wait_entered(self, n: int = 1) -> None:
        for _ in range(n):
            assert await asyncio.to_thread(self.entered.acquire, True, 10), "the held decode never started"

    def release(self) -> None:
        self._go.set()


def _strip_png(width: int, height: int) -> bytes:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- hot swap (issue 12, item 7) --------------------------------------------------------------


def test_a_request_decoding_during_a_swap_is_answered_by_the_model_it_picked(
    harness: AppHarness, onnx_pair: tuple[Path, Path]
) -> None:
    held = HeldDecode(harness, png_bytes(7))
    service = harness.service
    old = service.require_router().champion

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response, bool]:
        pending = asyncio.create_task(harness.client.post("/v1/predict", content=held.held))
        await held.wait_entered()  # routed to the old champion, still decoding
        reload = asyncio.create_task(
            harness.client.post("/admin/reload", json={"model": str(onnx_pair[1])}, headers=TOKEN)
        )
        while service.require_router().champion is old:
            await asyncio.sleep(0.01)
        fresh = await harness.client.post("/v1/predict", content=png_bytes(8))  # new requests: the new model
        reload_waited = not reload.done()
        held.release()
        return await pending, fresh, await reload, reload_waited

    answer, fresh, reload, reload_waited = harness.run(scenario())
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["name"] == "multilabel-0"  # answered by the model it was routed to
    assert fresh.status_code == 200 and fresh.json()["model"]["name"] == "multilabel-1"
    assert reload.status_code == 200 and reload_waited  # the reload waited for the old model's request
    assert old.in_flight == 0 and old.retired and not old.batcher.running


def test_a_v2_request_that_found_the_old_arm_before_a_swap_is_answered_by_it(
    harness: AppHarness, onnx_pair: tuple[Path, Path]
) -> None:
    service = harness.service
    old = service.find_arm("multilabel-0")  # what /v2 does before reading the body
    swap = harness.request("POST", "/admin/reload", json={"model": str(onnx_pair[1])}, headers=TOKEN)
    assert swap.status_code == 200 and not old.batcher.running  # nothing held it: stopped at once
    feeds = {IMAGE_INPUT: to_model_input(np.zeros((32, 32), np.uint8), old.model.spec)}
    (scores,) = harness.run(service.infer_tensors(old, feeds, [old.model.meta.output]))
    assert scores.shape == (1, len(old.model.labels))

    async def settle() -> None:
        for _ in range(100):
            if not old.batcher.running:
                return
            await asyncio.sleep(0.01)

    harness.run(settle())
    assert old.in_flight == 0 and not old.batcher.running  # stopped again once answered


# -- admission at the door (item 9) -----------------------------------------------------------


@pytest.mark.parametrize("harness", [{"max_in_flight": 2}], indirect=True)
def test_requests_beyond_max_in_flight_are_refused_at_once_with_retry_after(harness: AppHarness) -> None:
    held = HeldDecode(harness, png_bytes(3))

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response], float]:
        admitted = [asyncio.create_task(harness.client.post("/v1/predict", content=held.held)) for _ in range(2)]
        await held.wait_entered(2)  # both are decoding: the server is at capacity
        start = time.perf_counter()
        refused = await asyncio.gather(*(harness.client.post("/v1/predict", content=png_bytes(4)) for _ in range(6)))
        refused_in = time.perf_counter() - start
        held.release()
        return list(await asyncio.gather(*admitted)), list(refused), refused_in

    admitted, refused, refused_in = harness.run(scenario())
    assert [r.status_code for r in refused] == [503] * 6
    assert refused_in < 2.0  # refused at the door, not after queueing behind the decodes
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert "at capacity (2 requests in progress)" in refused[0].json()["error"]
    assert [r.status_code for r in admitted] == [200, 200]
    assert harness.service.admission.active == 0
    assert harness.request("POST", "/v1/predict", content=png_bytes(5)).status_code == 200


# -- pixel bombs (item 8) ---------------------------------------------------------------------


def test_pixel_bombs_are_refused_with_their_size_and_serving_goes_on(harness: AppHarness) -> None:
    buf = io.BytesIO()
    Image.new("L", (1, 120000)).save(buf, format="PNG", optimize=True)
    thin = buf.getvalue()
    assert len(thin) < 400
    start = time.perf_counter()
    answer = harness.request("POST", "/v1/predict", content=thin)
    assert answer.status_code == 422 and "1x120000" in answer.json()["error"], answer.text
    wide = harness.request("POST", "/v1/predict", content=_strip_png(20000, 20))
    assert wide.status_code == 422 and "20000x20" in wide.json()["error"]
    assert "aspect ratio of 1,000:1" in wide.json()["error"]
    assert time.perf_counter() - start < 3.0
    assert harness.request("POST", "/v1/predict", content=png_bytes(1)).status_code == 200


@pytest.mark.parametrize("harness", [{"max_aspect_ratio": None}], indirect=True)
def test_without_the_aspect_limit_a_strip_is_scored_within_bounded_memory(harness: AppHarness) -> None:
    start = time.perf_counter()
    answer = harness.request("POST", "/v1/predict", content=_strip_png(20000, 20))
    assert answer.status_code == 200, answer.text
    assert time.perf_counter() - start < 3.0  # it padded a 4096-pixel square, not a 20000-pixel one


def test_a_slow_decode_does_not_stall_other_requests(harness: AppHarness) -> None:
    # One upload holds the CPU gate as a huge decode would; batches (and behind them every other
    # decode) used to wait for it to finish.
    held = HeldDecode(harness, png_bytes(9), inside_gate=True)

    async def scenario() -> tuple[list[httpx.Response], float, httpx.Response]:
        slow = asyncio.create_task(harness.client.post("/v1/predict", content=held.held))
        await held.wait_entered()
        start = time.perf_counter()
        others = await asyncio.wait_for(
            asyncio.gather(*(harness.client.post("/v1/predict", content=png_bytes(i)) for i in range(4))), 4
        )
        took = time.perf_counter() - start
        held.release()
        return list(others), took, await slow

    others, took, slow = harness.run(scenario())
    assert [a.status_code for a in others] == [200] * 4
    assert took < 3.0
    assert slow.status_code == 200


@pytest.mark.parametrize("harness", [{"max_in_flight": 1}], indirect=True)
def test_the_door_admits_before_reading_the_body_and_counts_a_request_once(harness: AppHarness) -> None:
    assert harness.request("POST", "/v1/predict", content=png_bytes(1)).status_code == 200  # door + service: one
    held = HeldDecode(harness, png_bytes(2))
    read: list[bool] = []

    async def body() -> Any:
        read.append(True)
        yield png_bytes(3)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        first = asyncio.create_task(harness.client.post("/v1/predict", content=held.held))
        await held.wait_entered()
        refused = await harness.client.post("/v1/predict", content=body())
        v2 = await harness.client.post("/v2/models/multilabel-0/infer", json={"inputs": []})
        held.release()
        return await first, refused, v2

    first, refused, v2 = harness.run(scenario())
    assert first.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert read == []  # refused before a byte of the body was read
    assert v2.status_code == 503 and "at capacity" in v2.json()["error"]


# -- adaptive batching on /v2 (issue 13) ------------------------------------------------------


def test_a_lone_v2_request_does_not_wait_for_itself_as_still_decoding(harness: AppHarness) -> None:
    arm = harness.service.find_arm("multilabel-0")
    arm.batcher.incoming_wait = 10.0  # a request counted as decoding would hold its own batch 10 s
    feeds = {IMAGE_INPUT: to_model_input(np.zeros((32, 32), np.uint8), arm.model.spec)}
    (scores,) = harness.run(harness.service.infer_tensors(arm, feeds, [arm.model.meta.output]))
    assert scores.shape == (1, len(arm.model.labels))
    assert arm.batcher.stats.batches == 1
    assert arm.batcher.stats.queue_ns < 5e9, "the batch waited for the request it already held"


# -- score histograms ---------------------------------------------------------------------------


def test_the_score_histograms_observe_what_each_kind_answered(harness: AppHarness, tmp_path: Path) -> None:
    """Findings feed radflow_label_score per label, a regression value radflow_predicted_value; neither the other."""
    answer = harness.request("POST", "/v1/predict", content=png_bytes(7)).json()
    text = harness.request("GET", "/metrics").text
    for finding in answer["findings"]:
        labels = {"arm": "champion", "label": finding["label"]}
        assert metric_value(text, "radflow_label_score_count", **labels) == 1
        assert metric_value(text, "radflow_label_score_sum", **labels) == pytest.approx(finding["probability"])
    assert metric_value(text, "radflow_predicted_value_count") == 0

    regression = AppHarness(_settings((make_onnx(tmp_path / "m", task="regression"),), tmp_path))
    try:
        value = regression.request("POST", "/v1/predict?sex=F", content=png_bytes(7)).json()["prediction"]["value"]
        text = regression.request("GET", "/metrics").text
    finally:
        regression.close()
    assert metric_value(text, "radflow_predicted_value_count", arm="champion") == 1
    assert metric_value(text, "radflow_predicted_value_sum", arm="champion") == pytest.approx(value)
    assert "radflow_label_score_count{" not in text
