"""Admission counts each request once, from the door to its answer, and refuses above the limit."""

from __future__ import annotations

import asyncio

import pytest

from radflow.inference.admission import Admission
from radflow.inference.errors import OverloadedError


def test_admission_refuses_above_the_limit_and_counts_a_request_once() -> None:
    async def main() -> None:
        gate = Admission(2)
        release = asyncio.Event()

        async def request() -> None:
            # the door, then the service inside the same request: counted once
            with gate.enter(), gate.enter():
                await release.wait()

        tasks = [asyncio.create_task(request()) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert gate.active == 2
        with pytest.raises(OverloadedError, match=r"at capacity \(2 requests in progress\)") as refused, gate.enter():
            pass
        assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "1"}
        release.set()
        await asyncio.gather(*tasks)
        assert gate.active == 0 and gate.refused == 1
        with gate.enter():
            assert gate.active == 1

    asyncio.run(main())


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        Admission(0)
