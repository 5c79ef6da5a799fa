"""The gateway's Kafka mode: routed images go to the workers, their answers come back as DICOM results.

As MONAI Deploy's Informatics Gateway, the gateway owns DICOM in and out and the workers own inference.
Each routed image is published to the images topic (:func:`radflow.kafka.publish_image`: a de-identified
PNG keyed by the study's hash), and its source instance is kept here, in memory, under the message's id.
The gateway consumes the predictions and dead-letter topics in a consumer group of its own; an answer whose
``message_id`` is kept is delivered with :meth:`radflow.pacs.ResultWriter.deliver` (source bytes + answer,
so the SR references the source), and the source is dropped.

Bounds (the sources are whole DICOM files): at most ``max_awaiting_mb`` are kept; a new source beyond it
evicts the OLDEST kept ones (outcome ``evicted``), and a source kept longer than ``answer_timeout_s`` is
dropped (``expired``); both are counted, logged by study hash and, with the results' ``dead_letter_dir``,
recorded in its ``dead-letter.jsonl`` (prediction id and why: the answer may still be in the store).
Nothing spills to disk: the sources carry the patient's identity. An image that cannot be de-identified
(``unpublishable``) or that the brokers did not take (``publish_failed``) is recorded the same way. An
answer for an id not kept (another gateway's, one evicted, or from before a restart) is counted
``unknown`` and skipped; a worker's dead letter for a kept id is logged, counted ``dead_letter`` and its source dropped.

Every gateway process must see every answer (the sources are in its memory), so each needs a consumer
group of its own (``kafka_group_id``, default ``radflow-gateway-<AE title>``); it starts at the topics'
end and commits as it goes, a restarted gateway having nothing left to match older answers to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from radflow.errors import ConfigError, RadflowError
from radflow.gateway.metrics import GatewayMetrics
from radflow.kafka.client import create_producer, publish_image
from radflow.kafka.settings import KafkaSettings
from radflow.pacs.results import ResultWriter

__all__ = ["RemoteScoring"]

log = logging.getLogger(__name__)

_ASSIGN_TIMEOUT_S = 30.0
"""How long start waits for the group to assign the answer topics' partitions (no image is sent before)."""
_DELIVERIES = 8
"""Results built and sent at once (each is a C-STORE/STOW-RS in a thread)."""


@dataclass
class _Kept:
    study: str
    source: bytes
    at: float


class RemoteScoring:
    """Publish routed images, keep their sources by message id, deliver the answers that match one."""

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        results: ResultWriter | None,
        metrics: GatewayMetrics,
        *,
        max_bytes: int,
        max_age_s: float,
    ):
        self.settings = settings
        self.group_id = group_id
        self.results = results
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.kept: OrderedDict[str, _Kept] = OrderedDict()
        self.kept_bytes = 0
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._consuming: asyncio.Task[None] | None = None
        self._delivering: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(_DELIVERIES)
        self._settled = asyncio.Event()

    async def start(self) -> None:
        """Connect the producer and, when results go back, join the answers' group at the topics' end."""
        s = self.settings
        producer = create_producer(s)
        await producer.start()
        self.producer = producer
        if self.results is None:  # nowhere to send results: publish only, keep nothing
            return
        consumer = AIOKafkaConsumer(
            **s.client_options(),
            group_id=self.group_id,
            enable_auto_commit=True,
            auto_offset_reset="latest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=max(int(s.session_timeout_s * 1000 / 3), 100),
            max_partition_fetch_bytes=16 * 1024 * 1024,
            client_id="radflow-gateway",
        )
        consumer.subscribe([s.predictions_topic, s.dead_letter_topic])
        try:
            await consumer.start()
            await _positioned(consumer)
        except BaseException:
            await consumer.stop()
            await producer.stop()
            self.producer = None
            raise
        self.consumer = consumer
        self._consuming = asyncio.create_task(self._consume(consumer))

    async def stop(self, drain_s: float) -> None:
        """Wait up to ``drain_s`` for the answers still awaited, drop the rest (counted ``unanswered``), disconnect."""
        if self.kept and self.consumer is not None:
            self._settled.clear()
            deadline = time.monotonic() + drain_s
            while self.kept and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self._settled.wait(), timeout=max(deadline - time.monotonic(), 0.01))
                except TimeoutError:
                    break
                self._settled.clear()
        for message_id in list(self.kept):
            self._drop(message_id, "unanswered", "the gateway stopped before the answer came")
        if self._consuming is not None:
            self._consuming.cancel()
            await asyncio.gather(self._consuming, return_exceptions=True)
            self._consuming = None
        await asyncio.gather(*self._delivering, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def submit(self, study: str, data: bytes, modality: str | None = None) -> str | None:
        """Publish one image (its source kept when results go back); the message id, or None when not sent."""
        if self.producer is None:
            raise RuntimeError("the gateway's Kafka mode is not started")
        message_id = str(uuid.uuid4())
        if self.results is not None:  # kept before sending: the answer may come before send_and_wait returns
            self._keep(message_id, study, data)
        try:
            await publish_image(
                self.producer, self.settings, data, study=study, message_id=message_id, modality=modality
            )
        except (RadflowError, KafkaError) as exc:
            self._forget(message_id)
            if isinstance(exc, RadflowError):  # its pixels cannot be de-identified: the image can never go
                outcome, reason = "unpublishable", str(exc)
            else:
                outcome, reason = "publish_failed", f"Kafka at {self.settings.bootstrap}: {type(exc).__name__}"
            self.metrics.kafka_images.labels(outcome).inc()
            log.warning("study %s: an image was not published (%s): %s", study[:12], outcome, reason)
            if self.results is not None:
                self.results.record_missing(study, message_id, outcome, reason)
            return None
        self.metrics.kafka_images.labels("published").inc()
        return message_id

    # -- the sources kept ------------------------------------------------------------------

    def _keep(self, message_id: str, study: str, data: bytes) -> None:
        self._expire()
        self.kept[message_id] = _Kept(study, data, time.monotonic())
        self.kept_bytes += len(data)
        while self.kept_bytes > self.max_bytes and len(self.kept) > 1:
            oldest = next(iter(self.kept))
            limit = self.max_bytes / 2**20
            self._drop(oldest, "evicted", f"more than {limit:g} MiB of sources awaited answers; the oldest went")
        self._gauge()

    def _forget(self, message_id: str) -> _Kept | None:
        kept = self.kept.pop(message_id, None)
        if kept is not None:
            self.kept_bytes -= len(kept.source)
            self._gauge()
            if not self.kept:
                self._settled.set()
        return kept

    def _drop(self, message_id: str, outcome: str, reason: str) -> None:
        kept = self._forget(message_id)
        if kept is None:
            return
        self.metrics.kafka_images.labels(outcome).inc()
        log.warning("study %s: no result for prediction %s (%s): %s", kept.study[:12], message_id, outcome, reason)
        if self.results is not None:
            self.results.record_missing(kept.study, message_id, outcome, reason)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.kept:
            message_id, oldest = next(iter(self.kept.items()))
            if now - oldest.at < self.max_age_s:
                return
            self._drop(message_id, "expired", f"no answer within {self.max_age_s:g} s")

    def _gauge(self) -> None:
        self.metrics.kafka_awaiting.set(len(self.kept))
        self.metrics.kafka_awaiting_bytes.set(self.kept_bytes)

    # -- answers ---------------------------------------------------------------------------

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("reading answers failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
            for records in batch.values():
                for record in records:
                    self._on_record(record.topic, record.value)
            self._expire()

    def _on_record(self, topic: str, value: bytes | None) -> None:
        try:
            body = json.loads(value or b"")
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        message_id = body.get("message_id") if isinstance(body, dict) else None
        if not isinstance(message_id, str) or message_id not in self.kept:
            self.metrics.kafka_answers.labels("unknown").inc()
            return
        assert isinstance(body, dict)
        if topic == self.settings.dead_letter_topic:
            self.metrics.kafka_answers.labels("dead_letter").inc()
            self._drop(message_id, "dead_letter", str(body.get("reason") or "the worker gave no reason"))
            return
        kept = self._forget(message_id)
        assert kept is not None
        self.metrics.kafka_answers.labels("matched").inc()
        task = asyncio.create_task(self._deliver(kept, body))
        self._delivering.add(task)
        task.add_done_callback(self._delivering.discard)

    async def _deliver(self, kept: _Kept, answer: dict[str, Any]) -> None:
        assert self.results is not None
        async with self._slots:
            try:
                await self.results.deliver(kept.source, answer)
            except RadflowError as exc:  # DataError: no result can be built from this answer
                self.metrics.kafka_images.labels("failed").inc()
                log.warning("study %s: no DICOM result could be built: %s", kept.study[:12], exc)
                return
            except Exception:
                self.metrics.kafka_images.labels("failed").inc()
                log.exception("study %s: delivering a result failed", kept.study[:12])
                return
        self.metrics.kafka_images.labels("answered").inc()


async def _positioned(consumer: AIOKafkaConsumer) -> None:
    """Until the group assigned the partitions and each has a position (at the end, for a new group)."""
    deadline = time.monotonic() + _ASSIGN_TIMEOUT_S
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the Kafka group assigned no partitions of the answer topics within {_ASSIGN_TIMEOUT_S:g} s "
                "(do the predictions and dead-letter topics exist?)"
            )
        await asyncio.sleep(0.05)
    for tp in consumer.assignment():
        await consumer.position(tp)
