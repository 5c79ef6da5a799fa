"""Kafka clients of radflow's doors: the producer, ``publish_image`` and topic creation.

The same aiokafka code talks to Apache Kafka and to any Kafka-protocol broker (the tests run Tansu).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from radflow.inference.errors import OverloadedError
from radflow.kafka.messages import HEX64, MODALITY, ImageMessage, InvalidMessageError, deidentified_image
from radflow.kafka.settings import KafkaSettings

__all__ = ["MAX_MESSAGE_BYTES", "KafkaHandoff", "create_producer", "ensure_topics", "publish_image"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest message radflow produces: a de-identified radiograph PNG in base64 (the brokers' message.max.bytes
and the topics' max.message.bytes must allow it; Kafka's default is 1 MiB)."""


def create_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """A producer (not started) that waits for every in-sync replica (acks=all): a sent answer is not lost."""
    return AIOKafkaProducer(
        **settings.client_options(),
        acks="all",
        linger_ms=2,
        max_request_size=MAX_MESSAGE_BYTES,
        client_id="radflow",
    )


async def publish_image(
    producer: AIOKafkaProducer,
    settings: KafkaSettings,
    data: bytes,
    *,
    study: str | None = None,
    model: str | None = None,
    sex: str | None = None,
    message_id: str | None = None,
    modality: str | None = None,
) -> str:
    """Send one image to the images topic, de-identified (:func:`deidentified_image`); its prediction's id.

    ``study`` is the sha256 hex of the study id (the gateway's ``study_hash``), never the id: it is the
    message key, so a study's images land on one partition, and the worker's routing key. The call
    returns once the brokers acknowledged the message. ``message_id`` (a UUID) names the message instead of
    a fresh one, for a sender that must know the id before its answer can arrive (the gateway's Kafka mode).
    ``modality`` is the source's DICOM Modality (the worklist filters on it; the PNG has no header to carry it).
    """
    image, header_sex = await asyncio.to_thread(deidentified_image, data)
    modality = (modality or "").strip().upper()
    kept = modality if MODALITY.match(modality) else None  # an odd header value is left out, not a dead letter
    message = ImageMessage.create(image, study=study, model=model, sex=sex or header_sex, modality=kept)
    if message_id is not None:
        message = replace(message, id=message_id)
    key = (study or message.id).encode()
    await producer.send_and_wait(settings.images_topic, message.encode(), key=key)
    return message.id


class KafkaHandoff:
    """An HTTP server's hand-off to the workers (``POST /v1/predict?async=true``): one producer, started on first use.

    The answer is the prediction id the worker will store (``GET /v1/predictions/{id}`` once scored, or on
    the predictions topic). The server's lifespan closes it (:meth:`close`).
    """

    def __init__(self, settings: KafkaSettings):
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def submit(self, data: bytes, routing_key: str | None = None, sex: str | None = None) -> str:
        """Publish one upload; its prediction id. A routing key must be a sha256 hex (a hashed study id)."""
        study = routing_key.lower() if routing_key else None
        if study is not None and not HEX64.match(study):
            raise InvalidMessageError(
                "X-Routing-Key: async mode sends the key to Kafka, so it must be a sha256 hex digest "
                "(a hashed study id), never an identifier."
            )
        try:
            async with self._lock:
                if self._producer is None:
                    producer = create_producer(self.settings)
                    await producer.start()
                    self._producer = producer
            return await publish_image(self._producer, self.settings, data, study=study, sex=sex)
        except KafkaError as exc:  # the brokers, not the caller: 503, try again
            raise OverloadedError(
                f"Kafka at {self.settings.bootstrap} did not take the image ({type(exc).__name__}); retry shortly.",
                headers={"Retry-After": "5"},
            ) from None

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def ensure_topics(settings: KafkaSettings, partitions: int = 1, replication: int = 1) -> list[str]:
    """Create radflow's topics that do not exist yet (``radflow worker --create-topics``); the ones created."""
    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    created = []
    try:
        existing = set(await admin.list_topics())
        for topic in settings.topics():
            if topic in existing:
                continue
            try:
                await admin.create_topics([NewTopic(topic, partitions, replication)])
                created.append(topic)
            except TopicAlreadyExistsError:  # another worker created it meanwhile
                pass
    finally:
        await admin.close()
    if created:
        log.info("created topics %s (%d partitions)", ", ".join(created), partitions)
    return created
