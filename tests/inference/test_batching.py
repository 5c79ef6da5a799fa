"""The batcher's policy — a lone request waits for nothing, a burst behind a running batch becomes one
batch, a full queue is 503, a slow answer 504, a fixed window still waits — and the CPU gate between
decodes and ORT batches (a slow decode delays a batch by at most ``max_wait_s``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from radflow.config import ServeConfig
from radflow.inference.batching import CpuGate, DynamicBatcher
from radflow.inference.errors import OverloadedError, RequestTimeoutError


class _Model:
    """A fake ``run``: records each batch's size; while ``hold`` is set, a batch blocks until it is cleared."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def hold(self) -> None:
        self.release.clear()

    def __call__(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(feeds["x"]))
        self.started.set()
        assert self.release.wait(10)
        return [feeds["x"] * 2 for _ in outputs]

    async def running(self) -> None:
        """Until a batch has started (the worker thread reports it)."""
        assert await asyncio.to_thread(self.started.wait, 10)
        self.started.clear()


def _row(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 1), value, np.float32)}


async def _settle() -> None:
    """Let every ready task run a few steps; no timer is involved, so this takes no wall-clock time to speak of."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_lone_request_is_dispatched_at_once_not_after_a_window() -> None:
    model = _Model()

    async def main() -> None:
        batcher = DynamicBatcher(model)  # the defaults, as `radflow serve` gets them
        assert batcher.delay == ServeConfig().max_queue_delay_ms == 0
        batcher.start()
        first = asyncio.create_task(batcher.submit(_row(1), ["y"]))
        await _settle()
        # a second request a moment later: a batching window would still be open and take it in
        second = asyncio.create_task(batcher.submit(_row(2), ["y"]))
        answers = await asyncio.gather(first, second)
        assert [float(a[0][0, 0]) for a in answers] == [2, 4]
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [1, 1]  # the first ran alone, before the second arrived


def test_a_burst_that_arrives_while_a_batch_runs_becomes_the_next_batch() -> None:
    model = _Model()

    async def main() -> None:
        batcher = DynamicBatcher(model, max_batch_size=8)
        batcher.start()
        model.hold()
        first = asyncio.create_task(batcher.submit(_row(0), ["y"]))
        await model.running()
        burst = [asyncio.create_task(batcher.submit(_row(i), ["y"])) for i in range(1, 11)]
        await _settle()
        assert batcher.depth == 11
        model.release.set()
        answers = await asyncio.gather(first, *burst)
        assert [float(a[0][0, 0]) for a in answers] == [2 * i for i in range(11)]  # each gets its own row
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [1, 8, 2]  # the burst fills a batch, its rest goes in the one after


def test_a_full_queue_answers_503_with_retry_after() -> None:
    model = _Model()

    async def main() -> None:
        batcher = DynamicBatcher(model, max_batch_size=1, max_queue_size=2)
        batcher.start()
        model.hold()
        running = asyncio.create_task(batcher.submit(_row(), ["y"]))
        await model.running()
        queued = [asyncio.create_task(batcher.submit(_row(), ["y"])) for _ in range(2)]
        await _settle()
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(_row(), ["y"])
        assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
        model.release.set()
        await asyncio.gather(running, *queued)  # the admitted ones are still answered
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [1, 1, 1]


def test_a_request_not_answered_in_time_raises_request_timeout_and_is_never_run() -> None:
    model = _Model()

    async def main() -> None:
        batcher = DynamicBatcher(model, timeout_s=0.05)
        batcher.start()
        model.hold()
        running = asyncio.create_task(batcher.submit(_row(), ["y"]))
        await model.running()
        with pytest.raises(RequestTimeoutError) as late:
            await batcher.submit(_row(), ["y"])  # queued behind a batch that does not finish in time
        assert late.value.status_code == 504
        with pytest.raises(RequestTimeoutError):
            await running
        model.release.set()
        batcher.timeout_s = 10
        await batcher.submit(_row(), ["y"])
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [1, 1]  # the timed-out queued request was dropped, not run


def test_a_fixed_window_waits_for_more_requests() -> None:
    model = _Model()

    async def main() -> None:
        # a window far longer than the test: the batch goes when it is full, not when the window ends
        batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay_ms=60_000)
        batcher.start()
        first = asyncio.create_task(batcher.submit(_row(1), ["y"]))
        await asyncio.sleep(0.05)
        assert model.batches == []  # still waiting in the window
        await asyncio.gather(first, batcher.submit(_row(2), ["y"]))
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [2]


def test_adaptive_batches_wait_for_requests_still_decoding_but_not_for_a_failed_decode() -> None:
    model = _Model()

    async def main() -> None:
        batcher = DynamicBatcher(model, incoming_wait_ms=60_000)
        batcher.start()
        batcher.incoming = 2  # two uploads are being decoded
        first = asyncio.create_task(batcher.submit(_row(1), ["y"]))
        await asyncio.sleep(0.05)
        assert model.batches == []  # the batch waits for them
        batcher.incoming = 1
        second = asyncio.create_task(batcher.submit(_row(2), ["y"]))
        await asyncio.sleep(0.05)
        assert model.batches == []
        batcher.incoming = 0  # the last decode failed (422): nothing more is coming
        await asyncio.gather(first, second)
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [2]


def test_closing_refuses_what_is_still_queued_and_a_restart_serves_again() -> None:
    model = _Model()

    async def main() -> None:
        batcher = DynamicBatcher(model, max_queue_delay_ms=60_000, max_batch_size=4)
        batcher.start()
        waiting = asyncio.create_task(batcher.submit(_row(), ["y"]))  # held in a window that never ends
        await _settle()
        await batcher.close()
        with pytest.raises(OverloadedError):
            await waiting
        with pytest.raises(OverloadedError):
            await batcher.submit(_row(), ["y"])  # not running
        batcher.start()
        answer = await batcher.submit({"x": np.full((4, 1), 3, np.float32)}, ["y"])  # a full batch: no window
        assert answer[0].tolist() == [[6]] * 4
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [4]


def test_a_slow_decode_holds_a_batch_back_only_briefly_and_other_decodes_not_at_all() -> None:
    gate = CpuGate(max_wait_s=0.05)
    slow_started, slow_done = threading.Event(), threading.Event()
    times: dict[str, float] = {}

    def slow_decode() -> None:
        with gate.shared():
            slow_started.set()
            slow_done.wait(5)  # a huge upload still decoding

    def batch() -> None:
        with gate.exclusive():
            times["batch"] = time.perf_counter()
            time.sleep(0.02)

    def other_decode() -> None:
        with gate.shared():
            times["other"] = time.perf_counter()

    slow = threading.Thread(target=slow_decode)
    slow.start()
    assert slow_started.wait(5)
    start = time.perf_counter()
    runner = threading.Thread(target=batch)
    runner.start()
    time.sleep(0.01)  # the batch is waiting now: a new decode queues behind it
    other = threading.Thread(target=other_decode)
    other.start()
    runner.join(5)
    other.join(5)
    slow_done.set()
    slow.join(5)
    assert times["batch"] - start < 1.0  # ran beside the slow decode after its short wait
    assert times["other"] >= times["batch"]  # a waiting batch still goes before new decodes
    assert times["other"] - start < 1.0


def test_two_batches_never_run_at_once() -> None:
    gate = CpuGate(max_wait_s=0.01)
    running, overlap = [0], [False]
    lock = threading.Lock()

    def batch() -> None:
        with gate.exclusive():
            with lock:
                running[0] += 1
                overlap[0] |= running[0] > 1
            time.sleep(0.01)
            with lock:
                running[0] -= 1

    with gate.shared():  # a decode in progress while the batches line up
        threads = [threading.Thread(target=batch) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(5)
    assert not overlap[0]
