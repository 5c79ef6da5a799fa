"""The inference core both transports call: load models, decode off the loop, batch, log.

``/v1`` (images) and ``/v2`` (Open Inference Protocol tensors) are thin layers over
:class:`InferenceService`; so are the admin endpoints (routing, reload, promote, rollback).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from radflow.data.decode import DecodedImage, decode_image, sniff_format
from radflow.data.preprocess import to_model_input
from radflow.errors import ConfigError, NotFoundError
from radflow.runtime.metadata import IMAGE_INPUT, SEX_INPUT, sex_feature
from radflow.serve.batching import CpuGate
from radflow.serve.errors import OverloadedError, UnsupportedMediaError
from radflow.serve.metrics import ServiceMetrics
from radflow.serve.routing import CHALLENGER_ARM, CHAMPION_ARM, LoadedModel, ModelArm, Router, load_model
from radflow.serve.settings import ServeSettings
from radflow.serve.store import PredictionRecord, Store

__all__ = ["InferenceService", "PreparedImage", "preload"]

log = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """A decoded upload and, per arm that will score it, the model input tensor."""

    decoded: DecodedImage
    sha256: str
    tensors: list[np.ndarray]


def preload(settings: ServeSettings) -> dict[str, LoadedModel]:
    """Load the configured models now (before the server starts), so a bad URI fails as a clear error."""
    uris = [settings.resolved_model(), *([settings.challenger] if settings.challenger else [])]
    return {uri: load_model(uri, settings) for uri in uris}


class InferenceService:
    """Models, router, store and metrics of one running server."""

    def __init__(
        self,
        settings: ServeSettings,
        metrics: ServiceMetrics | None = None,
        preloaded: dict[str, LoadedModel] | None = None,
    ):
        self.settings = settings
        self._preloaded = dict(preloaded or {})
        self.metrics = metrics or ServiceMetrics()
        self.store: Store | None = None
        self.router: Router | None = None
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="radflow-decode")
        self._background: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self.gate = CpuGate() if settings.exclusive_inference else None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and load the models (in threads; the loop stays free)."""
        s = self.settings
        self.store = await asyncio.to_thread(
            Store, s.resolved_store_url(), s.resolved_inputs_dir() if s.store_inputs else None
        )
        champion = await self._load(s.resolved_model())
        challenger = await self._load(s.challenger) if s.challenger else None
        self.router = Router(
            ModelArm.create(champion, CHAMPION_ARM, s, self.metrics, self.gate),
            ModelArm.create(challenger, CHALLENGER_ARM, s, self.metrics, self.gate) if challenger else None,
            weight=s.challenger_weight if challenger else 0.0,
            shadow=s.shadow and challenger is not None,
        )

    async def _load(self, uri: str) -> LoadedModel:
        loaded = self._preloaded.pop(uri, None)
        return loaded if loaded is not None else await asyncio.to_thread(load_model, uri, self.settings)

    async def stop(self) -> None:
        """Finish queued and background work, then flush the log."""
        if self._background:
            await asyncio.wait(self._background, timeout=30)
        if self.router is not None:
            await asyncio.gather(*(a.batcher.drain() for a in self.router.arms()))
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        self.decode_pool.shutdown(wait=False)

    @property
    def ready(self) -> bool:
        return self.router is not None

    def require_router(self) -> Router:
        if self.router is None:
            raise OverloadedError("the model is still loading; retry shortly.", headers={"Retry-After": "1"})
        return self.router

    def require_store(self) -> Store:
        if self.store is None:
            raise OverloadedError("the store is not open yet; retry shortly.", headers={"Retry-After": "1"})
        return self.store

    # -- /v1 predict ------------------------------------------------------------------------

    def _prepare(self, data: bytes, arms: list[ModelArm]) -> PreparedImage:
        if self.gate is None:
            return self._decode(data, arms)
        with self.gate.shared():
            return self._decode(data, arms)

    def _decode(self, data: bytes, arms: list[ModelArm]) -> PreparedImage:
        fmt = sniff_format(data)
        if fmt is not None and fmt not in self.settings.allowed_formats:
            allowed = ", ".join(self.settings.allowed_content_types)
            raise UnsupportedMediaError(f"{fmt.upper()} uploads are not accepted here; allowed: {allowed}.")
        decoded = decode_image(data, name="upload", max_pixels=self.settings.max_pixels)
        tensors = [to_model_input(a.model.prepare(decoded), a.model.spec) for a in arms]
        return PreparedImage(decoded, hashlib.sha256(data).hexdigest(), tensors)

    async def _score(self, arm: ModelArm, tensor: np.ndarray, sex: np.ndarray | None) -> np.ndarray:
        feeds = {IMAGE_INPUT: tensor}
        if arm.model.needs_sex:
            feeds[SEX_INPUT] = sex if sex is not None else np.full((1, 1), 0.5, np.float32)
        outs = await arm.batcher.submit(feeds, [arm.model.meta.output])
        return outs[0][0]

    async def predict(self, data: bytes, routing_key: str | None = None, sex: str | None = None) -> dict[str, Any]:
        """Score one image with the routed arm (and the shadow arm in the background); log both."""
        start = time.perf_counter()
        router = self.require_router()
        store = self.require_store()
        arm = router.choose(routing_key)
        shadow = router.shadow_arm()
        arms = [arm, *([shadow] if shadow is not None and shadow is not arm else [])]
        loop = asyncio.get_running_loop()
        for a in arms:
            a.batcher.incoming += 1
        try:
            prepared = await loop.run_in_executor(self.decode_pool, self._prepare, data, arms)
        finally:
            for a in arms:
                a.batcher.incoming -= 1
        sex_value = sex if sex is not None else prepared.decoded.meta.get("sex")
        sex_arr = sex_feature([sex_value or ""]) if any(a.model.needs_sex for a in arms) else None
        scores = await self._score(arm, prepared.tensors[0], sex_arr)
        prediction = arm.model.to_prediction(scores).to_dict()
        request_id = str(uuid.uuid4())
        latency_ms = round((time.perf_counter() - start) * 1000, 2)
        record = PredictionRecord(
            model_name=arm.name,
            model_version=arm.version,
            model_alias=arm.loaded.alias,
            arm=arm.arm,
            outputs=prediction,
            input_sha256=prepared.sha256,
            input_format=prepared.decoded.format,
            latency_ms=latency_ms,
            request_id=request_id,
        )
        store.log(record, prepared.decoded.pixels if self.settings.store_inputs else None)
        arm.served += 1
        self._observe_scores(arm, arm.arm, scores)
        if len(arms) > 1:
            task = asyncio.create_task(self._shadow(arms[1], prepared, sex_arr, request_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return {
            "id": record.id,
            "model": {"name": arm.name, "version": arm.version, "alias": arm.loaded.alias},
            "arm": arm.arm,
            **prediction,
            "input_sha256": prepared.sha256,
            "latency_ms": latency_ms,
        }

    async def _shadow(self, arm: ModelArm, prepared: PreparedImage, sex: np.ndarray | None, request_id: str) -> None:
        start = time.perf_counter()
        try:
            scores = await self._score(arm, prepared.tensors[1], sex)
        except Exception:  # a failing shadow must never affect the answer already given
            log.exception("shadow scoring with %s v%s failed", arm.name, arm.version)
            return
        record = PredictionRecord(
            model_name=arm.name,
            model_version=arm.version,
            model_alias=arm.loaded.alias,
            arm=arm.arm,
            outputs=arm.model.to_prediction(scores).to_dict(),
            input_sha256=prepared.sha256,
            input_format=prepared.decoded.format,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
            shadow=True,
            request_id=request_id,
        )
        self.require_store().log(record)
        self._observe_scores(arm, "shadow", scores)

    def _observe_scores(self, arm: ModelArm, arm_label: str, scores: np.ndarray) -> None:
        if arm.model.meta.is_regression:
            self.metrics.values.labels(arm.name, arm.version, arm_label).observe(float(scores[0]))
            return
        for label, score in zip(arm.model.labels, scores, strict=False):
            self.metrics.scores.labels(arm.name, arm.version, arm_label, label).observe(float(score))

    async def heatmap(self, prediction_id: str, label: str) -> bytes:
        """The CAM overlay of ``label`` for a logged prediction, drawn from the stored input pixels."""
        store = self.require_store()
        record = await asyncio.to_thread(store.get_prediction, prediction_id)
        if store.inputs_dir is None or not record.get("input_sha256"):
            raise NotFoundError("inputs are not stored on this server (store_inputs is off), so there is no heatmap.")
        await asyncio.to_thread(store.flush)
        path = store.input_path(record["input_sha256"])
        if not path.is_file():
            raise NotFoundError(f"the input image of prediction {prediction_id} is no longer stored.")
        router = self.require_router()
        arm = router.find(record["model_name"], record["model_version"]) or router.champion

        def draw() -> bytes:
            pixels = decode_image(path.read_bytes(), name=str(path)).pixels
            if self.gate is None:
                return arm.model.heatmap_png(pixels, label)
            with self.gate.exclusive():
                return arm.model.heatmap_png(pixels, label)

        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, draw)

    # -- admin ------------------------------------------------------------------------------

    async def reload(
        self, model: str | None = None, challenger: str | None = None, drop_challenger: bool = False
    ) -> dict[str, Any]:
        """Load the (new) champion and challenger, then swap them in; requests keep flowing throughout."""
        async with self._reload_lock:
            router = self.require_router()
            s = self.settings
            champion_uri = model or router.champion.loaded.uri
            challenger_uri = (
                None
                if drop_challenger
                else (challenger or (router.challenger.loaded.uri if router.challenger else None))
            )
            new_champion: LoadedModel = await asyncio.to_thread(load_model, champion_uri, s)
            new_challenger = await asyncio.to_thread(load_model, challenger_uri, s) if challenger_uri else None
            await router.swap(
                ModelArm.create(new_champion, CHAMPION_ARM, s, self.metrics, self.gate),
                ModelArm.create(new_challenger, CHALLENGER_ARM, s, self.metrics, self.gate) if new_challenger else None,
            )
            return router.state()

    def set_routing(self, weight: float | None, shadow: bool | None) -> dict[str, Any]:
        router = self.require_router()
        if (weight or shadow) and router.challenger is None:
            raise ConfigError("no challenger is loaded; start with --challenger URI or reload with one first.")
        if weight is not None:
            router.weight = weight
        if shadow is not None:
            router.shadow = shadow
        return router.state()
