"""Arms count the requests that hold them; a retired arm stops only when the last one is answered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from radflow.inference.batching import DynamicBatcher
from radflow.inference.routing import LoadedModel, ModelArm, Router


def _arm(name: str, calls: list[str]) -> ModelArm:
    def run(outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(name)
        return [feeds["x"] for _ in outputs]

    batcher = DynamicBatcher(run, max_queue_delay_ms=1, timeout_s=2)
    batcher.start()
    return ModelArm(cast(LoadedModel, None), "champion", batcher)


def test_swap_waits_for_requests_holding_the_old_arm_and_they_are_answered_by_it() -> None:
    calls: list[str] = []

    async def main() -> None:
        old, new = _arm("old", calls), _arm("new", calls)
        router = Router(old)
        held = router.choose().acquire()  # routed, now decoding
        swap = asyncio.create_task(router.swap(new, None))
        await asyncio.sleep(0.05)
        assert router.choose() is new and not swap.done() and old.batcher.running
        out = await held.batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"])  # decode done: score
        held.release()
        await asyncio.wait_for(swap, 2)
        assert out[0].shape == (1, 1) and calls == ["old"]
        assert old.in_flight == 0 and not old.batcher.running and new.batcher.running
        await new.retire()

    asyncio.run(main())


def test_a_retired_arm_picked_before_the_swap_restarts_for_its_request_and_stops_after() -> None:
    calls: list[str] = []

    async def main() -> None:
        old = _arm("old", calls)
        assert await old.retire() and not old.batcher.running
        with old.hold():
            assert old.batcher.running
            await old.batcher.submit({"x": np.ones((1, 1), np.float32)}, ["y"])
        for _ in range(100):
            if not old.batcher.running:
                break
            await asyncio.sleep(0.01)
        assert calls == ["old"] and not old.batcher.running

    asyncio.run(main())


def test_retire_with_a_timeout_reports_a_request_still_holding_the_arm() -> None:
    async def main() -> Any:
        arm = _arm("old", [])
        arm.acquire()
        stopped = await arm.retire(timeout_s=0.05)
        assert stopped is False and arm.batcher.running  # never pulled from under the request
        arm.release()
        await asyncio.sleep(0.05)
        assert not arm.batcher.running

    asyncio.run(main())
