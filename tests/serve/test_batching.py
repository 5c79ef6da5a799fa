"""The dynamic batcher alone: batch formation, overload (503 + Retry-After) and timeouts (504)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from radflow.inference.batching import CpuGate, DynamicBatcher, RunFn
from radflow.inference.errors import OverloadedError, RequestTimeoutError


def _double(calls: list[int], delay: float = 0.0) -> RunFn:
    def run(outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feeds["x"]))
        assert threading.current_thread() is not threading.main_thread()  # never on the event loop
        time.sleep(delay)
        return [feeds["x"] * 2 for _ in outputs]

    return run


def test_waiting_requests_run_as_one_batch_and_get_their_own_rows() -> None:
    calls: list[int] = []

    async def main() -> list[list[np.ndarray]]:
        batcher = DynamicBatcher(_double(calls), max_batch_size=4, max_queue_delay_ms=50)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit({"x": np.full((1, 2), i, np.float32)}, ["y"]) for i in range(6))
        )
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert calls == [4, 2]
    assert [float(r[0][0, 0]) for r in results] == [0, 2, 4, 6, 8, 10]


def test_requests_for_different_outputs_are_not_mixed() -> None:
    calls: list[int] = []

    async def main() -> None:
        batcher = DynamicBatcher(_double(calls), max_batch_size=8, max_queue_delay_ms=30)
        batcher.start()
        one = [batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"]) for _ in range(3)]
        two = [batcher.submit({"x": np.ones((2, 1), np.float32)}, ["y", "z"]) for _ in range(2)]
        answers = await asyncio.gather(*one, *two)
        assert [len(a) for a in answers] == [1, 1, 1, 2, 2]
        await batcher.close()

    asyncio.run(main())
    assert sorted(calls) == [3, 4]


def test_full_queue_is_refused_with_retry_after_and_slow_answers_time_out() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(
            _double([], delay=0.3), max_batch_size=1, max_queue_delay_ms=0, max_queue_size=1, timeout_s=0.1
        )
        batcher.start()
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"]))
        await asyncio.sleep(0.05)  # the worker has taken it; the queue is empty again
        second = asyncio.create_task(batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"]))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"])
        assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
        with pytest.raises(RequestTimeoutError) as late:
            await first
        assert late.value.status_code == 504
        with pytest.raises(RequestTimeoutError):
            await second
        await batcher.close()

    asyncio.run(main())


def test_a_failing_model_fails_only_its_batch() -> None:
    state = {"fail": True}

    def run(outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if state.pop("fail", False):
            raise RuntimeError("boom")
        return [feeds["x"]]

    async def main() -> None:
        batcher = DynamicBatcher(run, max_batch_size=2, max_queue_delay_ms=0)
        batcher.start()
        with pytest.raises(RuntimeError):
            await batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"])
        assert (await batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"]))[0].shape == (1, 1)
        await batcher.close()

    asyncio.run(main())


def test_a_batch_waits_for_requests_still_decoding() -> None:
    calls: list[int] = []

    async def main() -> None:
        # a generous cap on the extra wait keeps this independent of how busy the machine is
        batcher = DynamicBatcher(_double(calls), max_batch_size=8, max_queue_delay_ms=5, incoming_wait_ms=2000)
        batcher.start()
        batcher.incoming = 1  # one upload is still being decoded

        async def late() -> list[np.ndarray]:
            await asyncio.sleep(0.03)  # longer than the 5 ms window, shorter than the cap
            batcher.incoming = 0
            return await batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"])

        await asyncio.gather(batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"]), late())
        await batcher.close()

    asyncio.run(main())
    assert calls == [2]


def test_gate_keeps_decodes_apart_from_batches_but_not_from_each_other() -> None:
    gate = CpuGate()
    events: list[str] = []
    both_decoding = threading.Barrier(2, timeout=5)

    def decode(name: str) -> None:
        with gate.shared():
            both_decoding.wait()  # two decodes hold the gate at once
            events.append(f"{name} done")

    def batch() -> None:
        with gate.exclusive():
            events.append("batch start")
            time.sleep(0.05)
            events.append("batch end")

    with gate.exclusive():
        threads = [threading.Thread(target=decode, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        time.sleep(0.05)
        assert events == []  # decodes wait while a batch runs
    for t in threads:
        t.join(5)
    runner = threading.Thread(target=batch)
    runner.start()
    runner.join(5)
    assert sorted(events[:2]) == ["a done", "b done"] and events[2:] == ["batch start", "batch end"]
