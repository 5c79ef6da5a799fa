"""Dynamic batching: requests queue up and run together in one ONNX Runtime call, off the event loop.

A single worker forms a batch whenever ONNX Runtime is idle and runs it in a dedicated thread; the
event loop only queues and answers. How a batch is formed:

- **Adaptive** (``max_queue_delay_ms`` 0, the default): a batch is what is queued when ORT becomes
  idle, up to ``max_batch_size`` rows. A lone request runs at once and pays no window; under load,
  the requests that arrived while one batch ran make up the next. A batch waits only for requests
  already decoding (``incoming``, at most ``incoming_wait_ms``), never for ones that may come: those
  are known to be moments away, and with the :class:`CpuGate` (decodes pause while a batch runs)
  they are what fills batches under load — without that wait, little would have queued behind each
  batch and batches would stay small.
- **Fixed window** (``max_queue_delay_ms`` > 0): a batch also waits for more requests until its
  oldest one has queued that long, as Triton's dynamic batcher does with a queue delay.

Requests with different output sets (e.g. a V2 client asking for the CAM) are batched separately.
One batch runs at a time, spread over the cores by ORT's intra-op threads, so "idle" means no
batch running.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from radflow.inference.errors import OverloadedError, RequestTimeoutError

__all__ = ["BatchStats", "CpuGate", "DynamicBatcher", "RunFn"]

RunFn = Callable[[Sequence[str], dict[str, np.ndarray]], list[np.ndarray]]
"""``(output names, feeds) -> outputs``: an ORT ``session.run``."""


class CpuGate:
    """A readers-writer lock between decoding threads (shared) and ORT batches (exclusive, preferred).

    ORT splits each operator over all cores and waits for its slowest thread, so one core busy
    decoding an upload slows a whole batch far more than the decode is worth on a small machine.
    With the gate, decodes run in parallel with each other but never beside a batch; a waiting
    batch goes first.

    A batch waits at most ``max_wait_s`` for the decodes already running, then runs beside them:
    one slow decode (a huge upload) must not hold up the batch and, behind it, every other decode.
    """

    def __init__(self, max_wait_s: float = 0.05) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self.max_wait_s = max_wait_s

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and self._waiting_writers == 0)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            deadline: float | None = None
            while True:
                if self._writer:
                    self._cond.wait()
                    continue
                if self._readers == 0:
                    break
                # decodes already running get a short head start; new ones wait until the batch is done
                now = time.monotonic()
                deadline = now + self.max_wait_s if deadline is None else deadline
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    future: asyncio.Future[list[np.ndarray]]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters a batcher keeps for /v2 stats and metrics callbacks."""

    batches: int = 0
    rows: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    failures: int = 0
    last_inference_ms: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


class DynamicBatcher:
    """Queue + batching worker around one model's ``run``; create and :meth:`start` inside the event loop.

    ``max_queue_delay_ms`` 0 (the default) is adaptive batching; above 0, a fixed window (see the module).
    """

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 0.0,
        max_queue_size: int = 256,
        timeout_s: float = 30.0,
        on_batch: Callable[[int, list[float], float], None] | None = None,
        gate: CpuGate | None = None,
        incoming_wait_ms: float | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}.")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be 0 (adaptive) or more, got {max_queue_delay_ms}.")
        self._run = run
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_ms / 1000.0
        # how long past the window a batch may wait for requests still decoding (``incoming``)
        self.incoming_wait = max(4 * self.delay, 0.05) if incoming_wait_ms is None else incoming_wait_ms / 1000.0
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self.stats = BatchStats()
        self.max_queue_size = max_queue_size
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pending = 0
        self._incoming = 0
        self.gate = gate

    @property
    def incoming(self) -> int:
        """Requests still decoding that will be submitted here: a batch waits a little longer for them."""
        return self._incoming

    @incoming.setter
    def incoming(self, value: int) -> None:
        self._incoming = value
        if value <= 0:  # the last one arrived (or failed to decode): a batch waiting for it can go
            self._notify()

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return self._pending

    @property
    def running(self) -> bool:
        """The worker is started (and not closed): submitted requests will be run."""
        return self._worker is not None

    def start(self) -> None:
        """Start the worker (again, after :meth:`close`: an arm kept for a late request restarts it)."""
        if self._worker is None:
            self._wake = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="radflow-ort")
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name="radflow-batcher")

    async def submit(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run ``feeds`` (leading axis = rows) with the others in the queue; the outputs for these rows."""
        if self._worker is None:
            # a request queued here would wait for a worker that never comes: fail it now, clearly
            raise OverloadedError("the model is not running (it was unloaded); retry.", headers={"Retry-After": "1"})
        if len(self._queue) >= self.max_queue_size:
            raise OverloadedError(
                f"the server is at capacity ({self.max_queue_size} requests queued); retry shortly.",
                headers={"Retry-After": "1"},
            )
        rows = int(next(iter(feeds.values())).shape[0])
        item = _Item(feeds, tuple(outputs), rows, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._notify()
        self._pending += 1
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), self.timeout_s)
        except TimeoutError:
            item.future.cancel()
            raise RequestTimeoutError(f"the model did not answer within {self.timeout_s:g} s.") from None
        finally:
            self._pending -= 1

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _wait(self, timeout: float | None) -> None:
        """Until a request is submitted, ``incoming`` drops to 0, or ``timeout`` seconds pass."""
        wake = self._wake
        assert wake is not None
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)

    def _take(self, batch: list[_Item]) -> bool:
        """Move the queued requests that fit into ``batch``; True when it is full (or the next one is too big).

        The first request opens the batch (alone, when it has more rows than a batch); requests for
        other outputs stay queued, in order, for a later batch, and so does everything behind a
        request too big to join.
        """
        rows = sum(i.rows for i in batch)
        full = rows >= self.max_batch_size
        kept: deque[_Item] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # timed out while queued
                continue
            if not batch:
                batch.append(item)
                rows = item.rows
                full = rows >= self.max_batch_size
            elif full or item.outputs != batch[0].outputs:
                kept.append(item)
            elif rows + item.rows > self.max_batch_size:
                kept.append(item)
                full = True
            else:
                batch.append(item)
                rows += item.rows
                full = rows >= self.max_batch_size
        self._queue = kept
        return full

    async def _gather(self) -> list[_Item]:
        """The next batch, taken once the previous one has finished (ORT is idle while this runs).

        Adaptive (no window): the requests queued now, which under load are the ones that arrived
        while the last batch ran, plus those still decoding (see the module). A fixed window also
        waits until the oldest request has queued ``max_queue_delay_ms``.
        """
        batch: list[_Item] = []
        try:
            while not batch:
                self._take(batch)
                if not batch:
                    await self._wait(None)
            opened = time.perf_counter()
            window_end = batch[0].enqueued + self.delay
            incoming_end = max(window_end, opened + self.incoming_wait)
            while not self._take(batch):
                now = time.perf_counter()
                if now < window_end:
                    await self._wait(window_end - now)
                elif self.incoming > 0 and now < incoming_end:
                    await self._wait(incoming_end - now)
                else:
                    break
        except asyncio.CancelledError:  # closing: what was being gathered is queued again, for close() to settle
            self._queue.extendleft(reversed(batch))
            raise
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        executor = self._executor
        assert executor is not None
        while True:
            batch = await self._gather()
            start = time.perf_counter()
            names = batch[0].feeds.keys()
            feeds = {
                n: np.concatenate([i.feeds[n] for i in batch]) if len(batch) > 1 else batch[0].feeds[n] for n in names
            }
            try:
                outs = await loop.run_in_executor(executor, self._gated_run, batch[0].outputs, feeds)
            except asyncio.CancelledError:  # closed mid-run: the answers would never be delivered
                _refuse(batch)
                raise
            except Exception as exc:  # delivered to each waiting request, whose handler decides the status
                self.stats.failures += len(batch)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            end = time.perf_counter()
            rows = sum(i.rows for i in batch)
            waits = [start - i.enqueued for i in batch]
            self._record(rows, waits, end - start)
            offset = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result([o[offset : offset + item.rows] for o in outs])
                offset += item.rows

    def _gated_run(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.gate is None:
            return self._run(outputs, feeds)
        with self.gate.exclusive():
            return self._run(outputs, feeds)

    def _record(self, rows: int, waits: list[float], compute_s: float) -> None:
        s = self.stats
        s.batches += 1
        s.rows += rows
        s.queue_ns += int(sum(waits) * 1e9)
        s.compute_ns += int(compute_s * 1e9)
        s.last_inference_ms = int(time.time() * 1000)
        s.sizes[rows] = s.sizes.get(rows, 0) + 1
        if self.on_batch is not None:
            self.on_batch(rows, waits, compute_s)

    async def close(self) -> None:
        """Stop the worker; requests still queued get 503. Callers close a batcher once nothing uses it.

        :class:`radflow.inference.routing.ModelArm` does, by counting the requests that hold it.
        """
        worker, executor = self._worker, self._executor
        self._worker, self._executor = None, None  # a start() from here on gets a fresh worker
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if executor is not None:
            executor.shutdown(wait=False)
        if self._worker is not None:  # restarted meanwhile: what is queued is the new worker's
            return
        queued, self._queue = self._queue, deque()
        _refuse(queued)


def _refuse(items: Iterable[_Item]) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(
                OverloadedError("the model is shutting down; retry.", headers={"Retry-After": "1"})
            )
