"""The gateway: the DICOM node, study assembly and routing over :class:`radflow.inference.InferenceService`.

Each stable study's series are routed (:func:`radflow.gateway.routing.route`) and every image of
a routed series goes through ``InferenceService.predict`` — the same path as ``/v1/predict`` — with
the study's hashed id as routing key, so one study sticks to one A/B arm and its prediction rows
share a ``study_key``. The store thus sees the gateway's predictions as any other door's (the UI,
monitoring and feedback export read them) and holds no UID: the row keeps a hash of the hashed id
and the de-identified pixels, never the DICOM file.

One service runs per model the rules name (the gateway's ``--model`` when a rule names none);
all write to the same store.

With ``results`` set, each scored image's answer goes back to the PACS as DICOM through
:meth:`radflow.pacs.ResultWriter.deliver` (the one delivery path, the Kafka worker's too). With
``pull_url`` set, studies are also pulled over DICOMweb (:meth:`Gateway.pull`: those named at
start, and every ``poll_every_s`` the ones not yet taken) and scored as received ones are.

With ``kafka`` set (Kafka mode), nothing is scored here and no model is loaded: each routed image is
published for the ``radflow worker``s and its answer comes back as a DICOM result through
:class:`radflow.gateway.remote.RemoteScoring`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry

from radflow.errors import RadflowError
from radflow.gateway.assembly import Assembler, Series, Study
from radflow.gateway.metrics import GatewayMetrics
from radflow.gateway.node import DicomNode, ReceivedInstance, is_image_storage
from radflow.gateway.remote import RemoteScoring
from radflow.gateway.routing import SeriesInfo, route
from radflow.gateway.settings import GatewaySettings
from radflow.inference.routing import LoadedModel
from radflow.inference.service import InferenceService
from radflow.inference.settings import ServeSettings
from radflow.pacs.dicomweb import DicomWebSource
from radflow.pacs.results import ResultWriter

__all__ = ["Gateway", "study_hash"]

log = logging.getLogger(__name__)


def study_hash(study_uid: str) -> str:
    """The gateway's name for a study (sha256 hex of its Study Instance UID): its routing key and log name."""
    return hashlib.sha256(study_uid.encode()).hexdigest()


class Gateway:
    """A running DICOM node whose stable studies are scored; ``start``/``stop`` on one event loop."""

    def __init__(
        self,
        settings: GatewaySettings,
        serve: ServeSettings | None = None,
        preloaded: dict[str, LoadedModel] | None = None,
    ):
        self.settings = settings
        self.serve = serve
        self.services: dict[str, InferenceService] = {}
        self.default_model = ""
        if settings.kafka is None:
            if serve is None:
                raise RadflowError("a gateway that scores in-process needs serving settings (the model, the store).")
            default = serve.resolved_model()
            uris = [default, *(r.model for r in settings.rules if r.model and r.model != default)]
            for uri in dict.fromkeys(uris):
                update = {"model": uri, "challenger": None}
                model_settings = serve if uri == default else serve.model_copy(update=update)
                self.services[uri] = InferenceService(model_settings, preloaded=preloaded)
            self.default_model = default
            self._registry = self.services[default].metrics.registry
        else:
            self._registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self._registry)
        self.assembler = Assembler(
            settings.stable_after_s,
            study_hash,
            max_bytes=int(settings.max_pending_mb * 2**20),
            max_age_s=settings.max_study_s,
        )
        self.node = DicomNode(settings, self.metrics, self._received)
        # below the service's admission limit: the gateway waits for room instead of being refused
        self._limit = asyncio.Semaphore(min(settings.max_concurrent, serve.max_in_flight if serve else 1 << 30))
        self._watch: asyncio.Task[None] | None = None
        self._poll: asyncio.Task[None] | None = None
        self._scoring: set[asyncio.Task[Any]] = set()
        self.results = ResultWriter(settings.results, self.registry) if settings.results is not None else None
        self.source = DicomWebSource(settings.pull_url) if settings.pull_url is not None else None
        self._pulled: set[str] = set()
        self.remote: RemoteScoring | None = None
        if settings.kafka is not None:
            self.remote = RemoteScoring(
                settings.kafka,
                settings.answer_group,
                self.results,
                self.metrics,
                max_bytes=int(settings.max_awaiting_mb * 2**20),
                max_age_s=settings.answer_timeout_s,
            )

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry of the gateway's metrics and its default model's service metrics (if it scores)."""
        return self._registry

    async def start(self) -> None:
        """Load the models and open the store (Kafka mode: connect), then listen; nothing is accepted before."""
        for service in self.services.values():
            await service.start()
        if self.remote is not None:
            await self.remote.start()
        self.node.start()
        self._watch = asyncio.create_task(self._watch_stable())
        if self.source is not None and (self.settings.pull_studies or self.settings.poll_every_s is not None):
            self._poll = asyncio.create_task(self._pull_loop(datetime.now()))
        if not self.settings.allowed_aes:
            log.warning("no allowed calling AE titles set: any DICOM node that reaches the port may send studies")

    async def stop(self) -> None:
        """Stop listening, score what was acknowledged and not yet scored, close the services (flushing the log)."""
        self.node.stop()
        if self._poll is not None:
            self._poll.cancel()
            await asyncio.gather(self._poll, return_exceptions=True)
            self._poll = None
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await asyncio.gather(*self._scoring, return_exceptions=True)
        left = self.assembler.take_all()
        self.metrics.studies.labels("shutdown").inc(len(left))
        await asyncio.gather(*(self.score_study(s) for s in left))
        self.metrics.pending.set(0)
        if self.remote is not None:
            await self.remote.stop(self.settings.drain_s)
        for service in self.services.values():
            await service.stop()

    def _received(self, instance: ReceivedInstance) -> bool:
        added = self.assembler.add(
            instance.study_uid, instance.series_uid, instance.sop_uid, instance.info, instance.data
        )
        self.metrics.pending.set(self.assembler.pending)
        return added

    async def _watch_stable(self) -> None:
        # a quarter of the window: a study is scored at most 25% after it became stable
        interval = min(self.settings.stable_after_s / 4, 0.5)
        while True:
            await asyncio.sleep(interval)
            stable, old = self.assembler.take_stable()
            self.metrics.studies.labels("stable").inc(len(stable))
            self.metrics.studies.labels("max_age").inc(len(old))
            for study in old:
                log.warning(
                    "study %s still receiving after %g s: scoring the %d instances so far",
                    study.key[:12],
                    self.settings.max_study_s,
                    study.instance_count,
                )
            for study in [*stable, *old]:
                task = asyncio.create_task(self.score_study(study))
                self._scoring.add(task)
                task.add_done_callback(self._scoring.discard)
            self.metrics.pending.set(self.assembler.pending)

    async def pull(self, study_uids: list[str]) -> list[dict[str, Any]]:
        """Retrieve studies from ``pull_url`` (WADO-RS) and score their image instances; the answers.

        A study is complete when retrieved, so it is scored at once (no stable wait). Non-image
        instances (earlier results among them) are left out, as the node answers 0x0122 for them.
        """
        if self.source is None:
            raise RadflowError("this gateway has no pull URL (--pull-from) to pull studies from.")
        loop = asyncio.get_running_loop()
        answers: list[dict[str, Any]] = []
        for uid in study_uids:
            self._pulled.add(uid)
            instances = await loop.run_in_executor(None, self.source.retrieve, uid)
            study = await loop.run_in_executor(None, self._study_of, uid, instances)
            self.metrics.studies.labels("pulled").inc()
            answers += await self.score_study(study)
        return answers

    def _study_of(self, study_uid: str, instances: list[bytes]) -> Study:
        import pydicom

        now = time.monotonic()
        study = Study(study_hash(study_uid), now, now)
        for data in instances:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            sop_class = str(ds.get("SOPClassUID", ""))
            if not is_image_storage(sop_class):
                self.metrics.pulled.labels("non_image").inc()
                continue
            self.metrics.pulled.labels("taken").inc()
            info = SeriesInfo(
                modality=str(ds.get("Modality", "") or ""),
                body_part=str(ds.get("BodyPartExamined", "") or ""),
                series_description=str(ds.get("SeriesDescription", "") or ""),
                sop_class_uid=sop_class,
            )
            series = study.series.setdefault(str(ds.SeriesInstanceUID), Series(info))
            series.instances[str(ds.SOPInstanceUID)] = data
        return study

    async def _pull_loop(self, started: datetime) -> None:
        since = self.settings.pull_since or started
        assert self.source is not None
        source = self.source
        loop = asyncio.get_running_loop()
        todo = list(self.settings.pull_studies)
        while True:
            try:
                if todo:
                    await self.pull(todo)
                    todo = []
                if self.settings.poll_every_s is None:
                    return
                found = await loop.run_in_executor(None, source.studies_since, since)
                new = [uid for uid in found if uid not in self._pulled]
                if new:
                    log.info("poll: %d new studies at the pull URL", len(new))
                    await self.pull(new)
            except RadflowError as exc:
                log.warning("pulling studies failed: %s", exc)
            await asyncio.sleep(self.settings.poll_every_s or 0)

    async def score_study(self, study: Study) -> list[dict[str, Any]]:
        """Route each series of a stable study and score its images; the answers of the scored images.

        Kafka mode: the images are published instead, and the answers are ``{"id", "status": "queued"}``.
        """
        answers: list[dict[str, Any]] = []
        for series in study.series.values():
            answers += await self._score_series(study, series)
        log.info(
            "study %s: %d series, %d instances, %d %s",
            study.key[:12],
            len(study.series),
            study.instance_count,
            len(answers),
            "published" if self.remote is not None else "scored",
        )
        return answers

    async def _score_series(self, study: Study, series: Series) -> list[dict[str, Any]]:
        info = series.info
        rule = route(self.settings.rules, info)
        if rule is None:
            self.metrics.series.labels("unrouted", "").inc()
            # modality and SOP class only: a series description is free text and may identify
            log.info(
                "study %s: a %s series (%s) matches no rule; not scored",
                study.key[:12],
                info.modality or "?",
                info.sop_class_uid,
            )
            return []
        name = rule.name or ""
        if not rule.score:
            self.metrics.series.labels("skipped", name).inc()
            return []
        if self.remote is not None:
            results = await asyncio.gather(
                *(self._publish(study.key, data, info.modality) for data in series.instances.values())
            )
        else:
            service = self.services[rule.model or self.default_model]
            results = await asyncio.gather(
                *(self._score_image(service, study.key, data) for data in series.instances.values())
            )
        answers = [a for a in results if a is not None]
        self.metrics.series.labels("scored" if len(answers) == len(results) else "failed", name).inc()
        return answers

    async def _publish(self, key: str, data: bytes, modality: str | None = None) -> dict[str, Any] | None:
        """Kafka mode: hand the image to the workers; ``{"id", "status": "queued"}`` or None when not sent."""
        assert self.remote is not None
        async with self._limit:
            message_id = await self.remote.submit(key, data, modality)
        return None if message_id is None else {"id": message_id, "status": "queued"}

    async def _score_image(self, service: InferenceService, key: str, data: bytes) -> dict[str, Any] | None:
        async with self._limit:
            try:
                answer = await service.predict(data, routing_key=key)
            except RadflowError as exc:
                self.metrics.images_scored.labels("failed").inc()
                log.warning("study %s: an image could not be scored: %s", key[:12], exc)
                return None
            except Exception:
                self.metrics.images_scored.labels("failed").inc()
                log.exception("study %s: scoring an image failed", key[:12])
                return None
        self.metrics.images_scored.labels("ok").inc()
        if self.results is not None:
            model = answer.get("model") or {}
            arm = service.require_router().find(str(model.get("name")), str(model.get("version")))
            try:
                await self.results.deliver(data, answer, arm.model if arm is not None else None)
            except RadflowError as exc:
                log.warning("study %s: no DICOM result could be built: %s", key[:12], exc)
        return answer
