"""``radflow worker``: a consumer group member that scores the images topic through the inference core.

Each message is scored by :meth:`radflow.inference.InferenceService.predict`, the door-independent path
(routing, batching, the prediction log, metrics, drift), so messages in flight at once share ONNX
Runtime batches exactly as concurrent HTTP requests do. Delivery is at least once, writes are
idempotent:

- an offset is committed only after every message before it on its partition has its prediction row
  written (the store is flushed first) and its answer acknowledged on the predictions topic;
- the prediction's id is the message's id (:func:`radflow.store.prediction_id_scope`), the store skips an
  id it has written, and a message whose row exists is answered from that row without scoring, so a
  redelivery (a crash, a rebalance) never makes a second row.

Backpressure: at most ``max_in_flight`` messages are worked on; at that many the partitions are paused
(the broker keeps the rest), and resumed as messages finish. A message that can never be scored goes to
the dead-letter topic with its reason; a server-side failure (store or model down) is retried, not
dead-lettered, and holds its partition's commit until it is scored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from radflow.errors import NotFoundError, RadflowError
from radflow.kafka.client import create_producer
from radflow.kafka.messages import ImageMessage, InvalidMessageError, answer_message, dead_letter, is_urgent
from radflow.kafka.metrics import WorkerMetrics
from radflow.kafka.settings import KafkaSettings

if TYPE_CHECKING:
    from radflow.inference import InferenceService

__all__ = ["Deliver", "Worker"]

log = logging.getLogger(__name__)

Deliver = Callable[[bytes, dict[str, Any]], Awaitable[None]]
"""Result delivery after a prediction row is stored: (the message's image bytes, the answer)."""

COMMIT_INTERVAL_S = 0.5
"""Offsets are committed at most this often while messages flow (and at every rebalance and at shutdown)."""
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits between attempts at a message that failed on the server side (then the last one, until it is scored)."""


class _Unfinished(Exception):
    """A message given up at shutdown after a server-side failure: not done, so not committed."""


class _Offsets:
    """Per partition: the offsets being worked on and the next offset after the last one taken."""

    def __init__(self) -> None:
        self.pending: dict[TopicPartition, set[int]] = {}
        self.next: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def take(self, tp: TopicPartition, offset: int) -> None:
        self.pending.setdefault(tp, set()).add(offset)
        self.next[tp] = max(self.next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.pending.get(tp, set()).discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """The offset to commit per partition that moved: below it, every message taken is done."""
        out = {}
        for tp, nxt in self.next.items():
            pending = self.pending.get(tp)
            offset = min(pending) if pending else nxt
            if offset > self.committed.get(tp, -1):
                out[tp] = offset
        return out

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.pending.pop(tp, None)
            self.next.pop(tp, None)
            self.committed.pop(tp, None)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker):
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker._drain_and_commit()
        self.worker._offsets.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)) or "nothing")


class Worker:
    """One member of the workers' consumer group, scoring with a started :class:`InferenceService`."""

    def __init__(self, settings: KafkaSettings, service: InferenceService, deliver: Deliver | None = None):
        self.settings = settings
        self.service = service
        self.deliver = deliver
        self.metrics = WorkerMetrics(service.metrics.registry)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None  # made in start(): aiokafka clients belong to a running loop
        self._offsets = _Offsets()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_id: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._paused = False
        self._stopping = False
        self._last_commit = time.monotonic()

    async def start(self) -> None:
        """Connect the producer and join the group (the service must be started)."""
        s = self.settings
        self.producer = create_producer(s)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            **s.client_options(),
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_size,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=max(int(s.session_timeout_s * 1000 / 3), 100),
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            client_id="radflow-worker",
        )
        self.consumer.subscribe([s.images_topic], listener=_Rebalance(self))
        await self.consumer.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then finish what is in flight, commit, and leave the group."""
        consumer = self._require_consumer()
        try:
            while not stop.is_set():
                free = self.settings.max_in_flight - len(self._tasks)
                self._pause(free <= 0)
                if free <= 0:
                    await asyncio.wait(self._tasks, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
                else:
                    batch = await consumer.getmany(timeout_ms=200, max_records=min(self.settings.batch_size, free))
                    self._take(batch)
                if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
                    await self._commit()
                    await self._observe_lag()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Finish the messages in flight, commit their offsets, leave the group and flush the producer."""
        if self.consumer is None:
            return
        consumer, self.consumer = self.consumer, None
        self._stopping = True
        try:
            await self._drain_and_commit(consumer)
        finally:
            await consumer.stop()  # leaves the group: its partitions are reassigned at once
            if self.producer is not None:
                await self.producer.stop()

    # -- consuming ------------------------------------------------------------------------

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            raise RuntimeError("the worker is not started (await worker.start() first)")
        return self.consumer

    def _pause(self, full: bool) -> None:
        consumer = self.consumer
        if consumer is None or full == self._paused:
            return
        assigned = consumer.assignment()
        if full:
            consumer.pause(*assigned)
        else:
            consumer.resume(*assigned)
        self._paused = full
        self.metrics.paused.set(1 if full else 0)

    def _take(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        taken = 0
        for tp, records in batch.items():
            for record in records:
                self._offsets.take(tp, record.offset)
                task = asyncio.create_task(self._handle(tp, record))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                taken += 1
            self.metrics.consumed.labels(tp.topic).inc(len(records))
        self.metrics.poll_size.observe(taken)
        self.metrics.in_flight.set(len(self._tasks))

    async def _drain_and_commit(self, consumer: AIOKafkaConsumer | None = None) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer | None = None) -> None:
        """Commit what is done, after the store wrote those messages' rows (flush first: at least once)."""
        consumer = consumer or self.consumer
        self._last_commit = time.monotonic()
        offsets = self._offsets.committable()
        if consumer is None or not offsets:
            return
        store = self.service.require_store()
        await asyncio.to_thread(store.flush)
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance took the partition: its new owner redoes it
            log.warning("offset commit failed (%s); the messages since the last commit will be delivered again", exc)
            return
        self._offsets.committed.update(offsets)
        self.metrics.commits.inc()

    async def _observe_lag(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = await consumer.position(tp)
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - position, 0))

    # -- one message ----------------------------------------------------------------------

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            await self._answer(tp, record)
        except _Unfinished:
            return  # never marked done: the commit stays below it
        except Exception:  # one message must not stop the worker; the reason is in the log and dead letter
            log.exception("message %s[%d]@%d failed", tp.topic, tp.partition, record.offset)
            await self._dead_letter(record, "failed", "internal error while handling the message", None)
        self._offsets.done(tp, record.offset)
        self.metrics.in_flight.set(max(len(self._tasks) - 1, 0))

    async def _answer(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            message = ImageMessage.decode(record.value)
        except InvalidMessageError as exc:
            await self._dead_letter(record, "invalid", str(exc), None)
            return
        served = self.service.require_router().champion.name
        if message.model is not None and message.model != served:
            reason = f"routed to model {message.model!r}; this worker group serves {served!r}."
            await self._dead_letter(record, "invalid", reason, message.id)
            return
        try:
            answer, scored = await self._scored_once(message)
        except RadflowError as exc:  # a 4xx: the image itself cannot be scored (undecodable, too large, ...)
            await self._dead_letter(record, "unscorable", str(exc), message.id)
            return
        self.metrics.scored.labels("scored" if scored else "duplicate").inc()
        urgent = is_urgent(answer, self.settings.urgent)
        value = answer_message(answer, message)
        sends = [self._send(self.settings.predictions_topic, value, record.key)]
        if urgent:
            value = answer_message(answer, message, urgent)
            sends.append(self._send(self.settings.urgent_topic, value, record.key))
        await asyncio.gather(*sends)

    async def _scored_once(self, message: ImageMessage) -> tuple[dict[str, Any], bool]:
        """The message's answer and whether it was scored now (False: its row existed, or another copy is in flight)."""
        running = self._by_id.get(message.id)
        if running is not None:  # the same message twice in flight: one scoring, both answered
            return await asyncio.shield(running), False
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._by_id[message.id] = future
        try:
            answer, scored = await self._score(message)
            future.set_result(answer)
            return answer, scored
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a copy in flight re-raises it, none waiting is no warning
            raise
        finally:
            del self._by_id[message.id]

    async def _score(self, message: ImageMessage) -> tuple[dict[str, Any], bool]:
        from radflow.store import prediction_id_scope

        store = self.service.require_store()
        stored = await asyncio.to_thread(_stored_answer, store, message.id)
        if stored is not None:
            return stored, False
        attempt = 0
        while True:
            try:
                with prediction_id_scope(message.id):
                    answer = await self.service.predict(
                        message.image, routing_key=message.study, sex=message.sex, modality=message.modality
                    )
                break
            except RadflowError as exc:
                if exc.status_code < 500:
                    raise
                if self._stopping:  # left uncommitted: the group delivers it again after the restart
                    raise _Unfinished(message.id) from exc
                wait = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                attempt += 1
                log.warning("message %s: %s; retrying in %g s", message.id, exc, wait)
                await asyncio.sleep(wait)
        if self.deliver is not None:
            await asyncio.to_thread(store.flush)
            await self.deliver(message.image, answer)
        return answer, True

    async def _send(self, topic: str, value: bytes, key: bytes | None) -> None:
        """Send and wait for the brokers' acknowledgement (acks=all)."""
        if self.producer is None:
            raise RuntimeError("the worker is not started (await worker.start() first)")
        await self.producer.send_and_wait(topic, value, key=key)

    async def _dead_letter(self, record: ConsumerRecord, kind: str, reason: str, message_id: str | None) -> None:
        log.warning("dead letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        value = dead_letter(
            reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            message_id=message_id,
            original=record.value,
        )
        await self._send(self.settings.dead_letter_topic, value, record.key)
        self.metrics.dead_letters.labels(kind).inc()


def _stored_answer(store: Any, prediction_id: str) -> dict[str, Any] | None:
    """The answer a stored prediction row gave (as :meth:`InferenceService.predict` answers), or None."""
    try:
        row = store.get_prediction(prediction_id)
    except NotFoundError:
        return None
    return {
        "id": row["id"],
        "model": {"name": row["model_name"], "version": row["model_version"], "alias": row["model_alias"]},
        "arm": row["arm"],
        **(row.get("outputs") or {}),
        "input_sha256": row.get("input_sha256"),
        "latency_ms": row.get("latency_ms"),
    }
