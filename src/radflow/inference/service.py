"""The inference core both transports call: load models, decode off the loop, batch, log, monitor.

``/v1`` (images) and ``/v2`` (Open Inference Protocol tensors) are thin layers over
:class:`InferenceService`; so are the admin endpoints (routing, reload, promote, rollback) and
``/v1/monitoring``. Every image served through ``/v1`` also feeds its model version's drift window
(:mod:`radflow.monitor.drift`): the input summary is computed in the decode thread, the embedding
comes out of the same ONNX Runtime call as the scores, and the window append is a copy under a lock.
Drift is scored in the background and on request, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radflow.data.decode import DecodedImage, decode_image, sniff_format
from radflow.data.preprocess import from_model_input, to_model_input
from radflow.errors import ConfigError, NotFoundError, did_you_mean
from radflow.inference.admission import Admission
from radflow.inference.batching import CpuGate
from radflow.inference.errors import OverloadedError, UnsupportedMediaError
from radflow.inference.metrics import ServiceMetrics
from radflow.inference.routing import (
    CHALLENGER_ARM,
    CHAMPION_ARM,
    UNREGISTERED,
    LoadedModel,
    ModelArm,
    Router,
    load_model,
)
from radflow.inference.settings import ServeSettings
from radflow.monitor.drift import DriftAlert, DriftThresholds, DriftTracker
from radflow.monitor.reference import (
    embedding_source,
    embeddings_from,
    fetch_reference,
    input_summary,
    load_reference,
    output_feature_values,
)
from radflow.runtime import InvalidInputError, RadflowModel
from radflow.runtime.metadata import IMAGE_INPUT, SEX_INPUT, sex_feature
from radflow.tasks import Prediction, validate_feedback

if TYPE_CHECKING:
    from radflow.modelref import ResolvedModel
    from radflow.store import Store
    from radflow.workflow import Trace

__all__ = ["InferenceService", "PreparedImage", "model_identity", "preload"]

log = logging.getLogger(__name__)

LOG_WRITE_WINDOW_S = 0.05
"""Under load, predictions share one log commit per this long: a commit costs ~1 ms of CPU, ten times a row's.

Only unacknowledged data waits (feedback flushes the prediction it names, SIGTERM flushes all); a
SIGKILL loses at most this much of the log.
"""


def _view(decoded: DecodedImage) -> str:
    """The view (frontal/lateral) when the upload says (DICOM), else ""."""
    view = decoded.meta.get("view")
    return str(view) if view else ""


@dataclass
class PreparedImage:
    """A decoded upload and, per arm that will score it, the model input tensor and its drift input summary."""

    decoded: DecodedImage
    sha256: str
    tensors: list[np.ndarray]
    summaries: list[np.ndarray | None]
    spacing: tuple[float, float] | None = None
    """(row, column) pixel spacing in mm of a DICOM upload a segmentation arm scores (its areas in mm^2)."""

    @property
    def size(self) -> tuple[int, int]:
        """The upload's (height, width): a segmentation answer's masks are at this size."""
        height, width = self.decoded.pixels.shape
        return int(height), int(width)


def model_identity(model: RadflowModel, resolved: ResolvedModel | None) -> tuple[str, str, str | None]:
    """(name, version, alias) that label a workflow step model's logs and metrics, as :func:`load_model` names."""
    if resolved is not None and resolved.name is not None and resolved.version is not None:
        return resolved.name, resolved.version, resolved.alias
    stem = Path(model.source).stem
    return model.meta.name or stem, UNREGISTERED, None


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
        self.admission = Admission(settings.max_in_flight)
        self.drift = (
            DriftTracker(
                DriftThresholds(
                    psi=settings.drift_psi_threshold,
                    ks=settings.drift_ks_threshold,
                    embedding=settings.drift_embedding_threshold,
                    min_window=settings.drift_min_window,
                ),
                capacity=settings.drift_window,
            )
            if settings.drift
            else None
        )
        self._embedding_outputs: dict[int, str | None] = {}
        self._loops: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and load the models (in threads; the loop stays free)."""
        from radflow.store import Store

        s = self.settings
        self.store = await asyncio.to_thread(
            Store,
            s.resolved_store_url(),
            s.resolved_inputs_dir() if s.store_inputs else None,
            write_window_s=LOG_WRITE_WINDOW_S,
        )
        champion = await self._load(s.resolved_model())
        challenger = await self._load(s.challenger) if s.challenger else None
        self.router = Router(
            ModelArm.create(champion, CHAMPION_ARM, s, self.metrics, self.gate),
            ModelArm.create(challenger, CHALLENGER_ARM, s, self.metrics, self.gate) if challenger else None,
            weight=s.challenger_weight if challenger else 0.0,
            shadow=s.shadow and challenger is not None,
        )
        if self.drift is not None:
            self._loops.append(asyncio.create_task(self._every(s.drift_interval_s, self.evaluate_drift)))
        if s.auto_rule:
            self._loops.append(asyncio.create_task(self._every(s.auto_rule_interval_s, self.apply_auto_rule)))

    async def _load(self, uri: str) -> LoadedModel:
        loaded = self._preloaded.pop(uri, None)
        if loaded is None:
            loaded = await asyncio.to_thread(load_model, uri, self.settings)
        await asyncio.to_thread(self._track, loaded)
        return loaded

    def _track(self, loaded: LoadedModel) -> None:
        """Give the model version a drift monitor with its reference (fetched from MLflow when it came from there)."""
        self.track_model(loaded.model, loaded.name, loaded.version, in_mlflow=loaded.in_mlflow)

    def track_model(self, model: RadflowModel, name: str, version: str, *, in_mlflow: bool) -> None:
        """A drift monitor for model ``name`` ``version`` (blocking: in a thread); also for a workflow step's model."""
        if self.drift is None:
            return
        if in_mlflow:
            # Fetched on every load, as the ONNX file is: a re-export may have replaced the run's reference.
            runs = [model.meta.run_id or "", Path(model.source).parent.name]
            fetch_reference(model.source, runs, self.settings.resolved_tracking_uri())
        reference, reason = load_reference(model.source, model.labels)
        self.drift.register(name, version, reference, reason)
        self._embedding_outputs[id(model)] = (
            embedding_source([o.name for o in model.session.get_outputs()]) if reference is not None else None
        )

    def embedding_output(self, model: RadflowModel) -> list[str]:
        """The graph output drift needs beside the scores for ``model`` (none when it is not tracked)."""
        source = self._embedding_outputs.get(id(model))
        return [source] if source else []

    async def _every(self, interval_s: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:  # a monitoring job must never take the server down; the next tick retries
                log.exception("background monitoring job %s failed", getattr(job, "__name__", job))

    async def stop(self) -> None:
        """Finish queued and background work, then flush the log."""
        for task in self._loops:
            task.cancel()
        if self._loops:
            await asyncio.gather(*self._loops, return_exceptions=True)
        if self._background:
            await asyncio.wait(self._background, timeout=30)
        if self.router is not None:
            # every request in flight is answered (each is bounded by the request timeout) before the log closes
            arms = self.router.arms()
            stopped = await asyncio.gather(*(a.retire(timeout_s=30) for a in arms))
            for arm, done in zip(arms, stopped, strict=True):
                if not done:
                    await arm.batcher.close()
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
        s = self.settings
        decoded = decode_image(data, name="upload", max_pixels=s.max_pixels, max_aspect_ratio=s.max_aspect_ratio)
        tensors, summaries = [], []
        for a in arms:
            pixels = a.model.prepare(decoded)
            tensors.append(to_model_input(pixels, a.model.spec))
            summaries.append(input_summary(pixels) if self.drift is not None else None)
        dense = any(a.model.dense for a in arms)
        spacing = decoded.meta.get("spacing") if dense else None
        return PreparedImage(decoded, hashlib.sha256(data).hexdigest(), tensors, summaries, spacing)

    async def _score(
        self, arm: ModelArm, tensor: np.ndarray, sex: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, embedding row or None): the embedding is fetched in the same run when drift needs it."""
        feeds = {IMAGE_INPUT: tensor}
        if arm.model.needs_sex:
            feeds[SEX_INPUT] = sex if sex is not None else np.full((1, 1), 0.5, np.float32)
        emb_source = self._embedding_outputs.get(id(arm.model))
        outs = await arm.batcher.submit(feeds, [arm.model.meta.output, *([emb_source] if emb_source else [])])
        embedding = embeddings_from(outs[1], emb_source)[0] if emb_source else None
        return outs[0][0], embedding

    def _observe_drift(
        self, arm: ModelArm, summary: np.ndarray | None, scores: np.ndarray, embedding: np.ndarray | None, view: str
    ) -> None:
        self._observe_drift_of(arm.model, arm.name, arm.version, summary, scores, embedding, view)

    def _observe_drift_of(
        self,
        model: RadflowModel,
        name: str,
        version: str,
        summary: np.ndarray | None,
        scores: np.ndarray,
        embedding: np.ndarray | None,
        view: str,
    ) -> None:
        if self.drift is None or summary is None:
            return
        monitor = self.drift.get(name, version)
        if monitor is None:
            return
        # Maps (K, S, S) or a detector's anchors (A, 4 + K): the window holds their output features
        # (area:<s>; boxes:<l>, top_score:<l> of the boxes answered), not the raw outputs.
        if model.dense or model.meta.kind.network == "detection":
            scores = output_feature_values(scores[None], model.labels, monitor.outputs)[0]
        monitor.observe(summary, scores, embedding, view)

    def _log(
        self,
        arm: ModelArm,
        arm_label: str,
        scores: np.ndarray,
        *,
        input_sha256: str,
        input_format: str,
        latency_ms: float,
        request_id: str,
        summary: np.ndarray | None,
        embedding: np.ndarray | None,
        view: str = "",
        pixels: np.ndarray | None = None,
        upload: bytes | None = None,
        routing_key: str | None = None,
        size: tuple[int, int] | None = None,
        spacing: tuple[float, float] | None = None,
        modality: str | None = None,
    ) -> Any:
        """What every door does after scoring one image: the prediction log, the score metrics, the drift window.

        ``pixels`` (decoded) and ``upload`` (the bytes as sent) are what the stored input is made from
        (:meth:`radflow.store.Store.log` keeps a plain grey PNG upload as it is). ``size`` (height, width)
        and ``spacing`` of the upload place a segmentation answer's masks at the input's resolution; a
        tensor input has neither and gets them at model size.
        """
        from radflow.store import PredictionRecord, study_key

        prediction = arm.model.to_prediction(scores, size, spacing)
        record = PredictionRecord(
            model_name=arm.name,
            model_version=arm.version,
            model_alias=arm.loaded.alias,
            arm=arm.arm,
            outputs=prediction.to_dict(),
            input_sha256=input_sha256,
            input_format=input_format,
            latency_ms=latency_ms,
            shadow=arm_label == "shadow",
            request_id=request_id,
            study_key=study_key(routing_key),
            modality=modality or None,
        )
        if self.settings.store_inputs:
            self.require_store().log(record, pixels, upload)
        else:
            self.require_store().log(record)
        if arm_label != "shadow":
            arm.served += 1
        self._observe_scores(arm, arm_label, prediction)
        self._observe_drift(arm, summary, scores, embedding, view)
        return record

    def log_workflow(
        self, workflow: str, trace: Trace, *, upload: bytes, routing_key: str | None = None
    ) -> tuple[str, dict[str, list[str]]]:
        """What :meth:`_log` does, for each model step of one workflow answer (blocking: in a thread).

        One prediction row per model step (per crop for a model run on crops), each under that step's model
        name and version, with the answer it gave, tagged ``workflow`` and ``step`` and linked by one
        ``request_id``; the score histograms and the model version's drift window (tracked by
        :meth:`track_model` when the workflows were loaded) as for ``/v1``. A whole-image step's stored input
        is the upload, a crop's the crop's own pixels (its outputs add ``crop``: where it was cut, for what, its
        level). Returns (request id, {step: prediction ids in order}).
        """
        from radflow.store import PredictionRecord, new_prediction_ids, study_key

        store = self.require_store()
        decoded = trace.image
        assert decoded is not None, "run_workflow fills the trace's image"
        request_id, *row_ids = new_prediction_ids(1 + sum(len(run.predictions) for run in trace.runs))
        fresh = iter(row_ids)
        sha = hashlib.sha256(upload).hexdigest()
        key = study_key(routing_key)
        modality = decoded.meta.get("modality") or None
        ids: dict[str, list[str]] = {}
        entries: list[tuple[PredictionRecord, np.ndarray | None, bytes | None]] = []
        for run in trace.runs:
            name, version, alias = model_identity(run.model, run.resolved)
            emb_name = next(iter(run.extra), None)
            embeddings = embeddings_from(run.extra[emb_name], emb_name) if emb_name else None
            for i, prediction in enumerate(run.predictions):
                crop = run.crops[i] if run.crops is not None else None
                pixels = decoded.pixels if crop is None else np.ascontiguousarray(crop.pixels)
                outputs = run.outputs[i] if run.outputs else prediction.to_dict()
                if crop is not None:  # its pixels are cut from the stored image when a reader first asks
                    outputs = {**outputs, "crop": {**outputs.get("crop", {}), "image_sha256": sha}}
                record = PredictionRecord(
                    model_name=name,
                    model_version=version,
                    model_alias=alias,
                    arm=run.arm,
                    outputs=outputs,
                    input_sha256=sha if crop is None else hashlib.sha256(pixels.tobytes()).hexdigest(),
                    input_format=decoded.format if crop is None else "crop",
                    latency_ms=run.latency_ms,
                    request_id=request_id,
                    study_key=key,
                    modality=modality,
                    workflow=workflow,
                    step=run.step,
                    id=next(fresh),
                )
                if self.settings.store_inputs and crop is None:
                    entries.append((record, pixels, upload))
                else:  # a crop's PNG is written on first use (store.materialize_crop), not per answer
                    entries.append((record, None, None))
                ids.setdefault(run.step, []).append(record.id)
                self._observe_prediction(name, version, run.arm, prediction)
                summary = input_summary(run.pixels[i]) if self.drift is not None else None
                embedding = embeddings[i] if embeddings is not None else None
                self._observe_drift_of(run.model, name, version, summary, run.scores[i], embedding, _view(decoded))
        store.log_all(entries)  # one hand-over to the writer for every row of the answer
        return request_id, ids

    async def predict(
        self, data: bytes, routing_key: str | None = None, sex: str | None = None, modality: str | None = None
    ) -> dict[str, Any]:
        """Score one image with the routed arm (and the shadow arm in the background); log both.

        Every door that receives images calls this: ``/v1/predict``, the web UI, and the streaming
        and DICOM doors. The request is admitted first (503 at capacity, before any decoding) and
        holds the arms it is routed to until they have answered, so a hot swap cannot fail it.
        """
        with self.admission.enter():
            start = time.perf_counter()
            router = self.require_router()
            self.require_store()
            # routed and held in one step of the event loop: a swap cannot come in between
            arm = router.choose(routing_key).acquire()
            shadow = router.shadow_arm()
            shadow = shadow.acquire() if shadow is not None and shadow is not arm else None
            try:
                answer, prepared, sex_arr, request_id = await self._predict(
                    arm, shadow, data, sex, start, routing_key, modality
                )
            except BaseException:
                if shadow is not None:
                    shadow.release()
                raise
            finally:
                arm.release()
            if shadow is not None:  # the background task releases it
                task = asyncio.create_task(self._shadow(shadow, prepared, sex_arr, request_id))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return answer

    async def _predict(
        self,
        arm: ModelArm,
        shadow: ModelArm | None,
        data: bytes,
        sex: str | None,
        start: float,
        routing_key: str | None = None,
        modality: str | None = None,
    ) -> tuple[dict[str, Any], PreparedImage, np.ndarray | None, str]:
        arms = [arm, *([shadow] if shadow is not None else [])]
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
        scores, embedding = await self._score(arm, prepared.tensors[0], sex_arr)
        request_id = str(uuid.uuid4())
        latency_ms = round((time.perf_counter() - start) * 1000, 2)
        record = self._log(
            arm,
            arm.arm,
            scores,
            input_sha256=prepared.sha256,
            input_format=prepared.decoded.format,
            latency_ms=latency_ms,
            request_id=request_id,
            summary=prepared.summaries[0],
            embedding=embedding,
            view=_view(prepared.decoded),
            pixels=prepared.decoded.pixels,
            upload=data,
            routing_key=routing_key,  # its hash lets feedback export refuse held-out studies
            size=prepared.size,
            spacing=prepared.spacing,
            # the worklist filters on it; a de-identified PNG from Kafka has it from its message
            modality=modality or prepared.decoded.meta.get("modality"),
        )
        answer = {
            "id": record.id,
            "model": {"name": arm.name, "version": arm.version, "alias": arm.loaded.alias},
            "arm": arm.arm,
            **record.outputs,
            "input_sha256": prepared.sha256,
            "latency_ms": latency_ms,
        }
        return answer, prepared, sex_arr, request_id

    async def _shadow(self, arm: ModelArm, prepared: PreparedImage, sex: np.ndarray | None, request_id: str) -> None:
        """Score with the shadow arm (which the request acquired for us) and log it; release the arm after."""
        try:
            start = time.perf_counter()
            try:
                scores, embedding = await self._score(arm, prepared.tensors[1], sex)
            except Exception:  # a failing shadow must never affect the answer already given
                log.exception("shadow scoring with %s v%s failed", arm.name, arm.version)
                return
            self._log(
                arm,
                "shadow",
                scores,
                input_sha256=prepared.sha256,
                input_format=prepared.decoded.format,
                latency_ms=round((time.perf_counter() - start) * 1000, 2),
                request_id=request_id,
                summary=prepared.summaries[1],
                embedding=embedding,
                view=_view(prepared.decoded),
                size=prepared.size,
                spacing=prepared.spacing,
            )
        finally:
            arm.release()

    # -- /v2 infer ------------------------------------------------------------------------

    def find_arm(self, name: str, version: str | None = None) -> ModelArm:
        """The arm serving ``name`` (at ``version``); NotFoundError listing what this server serves."""
        router = self.require_router()
        arm = router.find(name, version)
        if arm is None:
            served = ", ".join(f"{a.name} (version {a.version})" for a in router.arms())
            what = f"{name!r}" + (f" version {version!r}" if version else "")
            raise NotFoundError(f"unknown model {what}; this server serves {served}.")
        return arm

    def _tensor_rows(self, arm: ModelArm, images: np.ndarray) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
        """Per row of a preprocessed ``image`` tensor: (sha256 of its bytes, drift summary, pixels to store).

        The pixels are recovered from the tensor with the model's own preprocessing (the inverse
        of :func:`~radflow.data.preprocess.to_model_input`), so drift compares them with the same
        reference as uploaded images and a stored tensor input can be shown and relabelled.
        """
        keep = self.drift is not None or self.settings.store_inputs
        rows = []
        for row in images:
            pixels = from_model_input(row, arm.model.spec) if keep else None
            summary = input_summary(pixels) if self.drift is not None and pixels is not None else None
            rows.append((hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest(), summary, pixels))
        return rows

    async def infer_tensors(self, arm: ModelArm, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Score preprocessed tensors (the ``/v2`` door): the same batches, log, metrics and drift as images.

        ``outputs`` are the graph outputs the caller asked for; the score output (and the embedding,
        when drift needs it) are fetched in the same run for the log, metrics and drift. ``arm`` is
        answered even if it was swapped out since the caller found it (it is held from here on).
        """
        with self.admission.enter(), arm.hold():
            return await self._infer_tensors(arm, feeds, outputs)

    async def _infer_tensors(self, arm: ModelArm, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        start = time.perf_counter()
        self.require_store()
        emb_source = self._embedding_outputs.get(id(arm.model))
        score_output = arm.model.meta.output
        extra = [n for n in dict.fromkeys([score_output, *([emb_source] if emb_source else [])]) if n not in outputs]
        names = [*outputs, *extra]
        loop = asyncio.get_running_loop()
        rows_task = loop.run_in_executor(self.decode_pool, self._tensor_rows, arm, feeds[IMAGE_INPUT])
        # Already decoded: not counted in ``incoming``, or its own batch would wait for it.
        results = await arm.batcher.submit(feeds, names)
        by_name = dict(zip(names, results, strict=True))
        scores = np.asarray(by_name[score_output])
        embeddings = embeddings_from(by_name[emb_source], emb_source) if emb_source else None
        rows = await rows_task
        request_id = str(uuid.uuid4())
        latency_ms = round((time.perf_counter() - start) * 1000, 2)
        for i, (sha256, summary, pixels) in enumerate(rows):
            self._log(
                arm,
                arm.arm,
                scores[i],
                input_sha256=sha256,
                input_format="tensor",
                latency_ms=latency_ms,
                request_id=request_id,
                summary=summary,
                embedding=embeddings[i] if embeddings is not None else None,
                pixels=pixels,
            )
        return [by_name[n] for n in outputs]

    def _observe_scores(self, arm: ModelArm, arm_label: str, prediction: Prediction) -> None:
        """One answer into the score histograms, read from what its task kind encoded.

        Each finding's probability goes to ``radflow_label_score``, a value to ``radflow_predicted_value``;
        an answer with neither (a kind whose output is not one number per label) is not observed.
        """
        self._observe_prediction(arm.name, arm.version, arm_label, prediction)

    def _observe_prediction(self, name: str, version: str, arm_label: str, prediction: Prediction) -> None:
        m = self.metrics
        for finding in prediction.findings or []:
            m.child(m.scores, name, version, arm_label, finding.label).observe(finding.probability)
        if prediction.value is not None:
            m.child(m.values, name, version, arm_label).observe(prediction.value)

    async def get_prediction(self, prediction_id: str) -> dict[str, Any]:
        """A logged prediction as the API shows it (NotFoundError for an unknown id)."""
        return await asyncio.to_thread(self.require_store().get_prediction, prediction_id)

    async def add_feedback(
        self,
        prediction_id: str,
        *,
        labels: dict[str, Any] | None = None,
        value: float | None = None,
        correct: bool | None = None,
        reader: str | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Check a reader's feedback against the logged prediction, then commit it (durable on return)."""
        store = self.require_store()
        if labels is None and value is None and correct is None:
            raise InvalidInputError("feedback needs at least one of 'labels', 'value' or 'correct'.")
        try:
            record = await asyncio.to_thread(store.get_prediction, prediction_id)
        except NotFoundError:
            # another worker behind the same port (--workers N) may have answered it and hold its row in
            # its write window still: look once more after the window
            await asyncio.sleep(LOG_WRITE_WINDOW_S * 4)
            record = await asyncio.to_thread(store.get_prediction, prediction_id)
        validate_feedback(record.get("outputs") or {}, labels, value)
        saved: dict[str, Any] = await asyncio.to_thread(
            store.add_feedback, prediction_id, labels, value, correct, reader, comment
        )
        return saved

    async def stored_input(self, prediction_id: str, purpose: str) -> tuple[dict[str, Any], Path]:
        """A logged prediction and the path of its stored input; NotFoundError saying why ``purpose`` can't be met."""
        store = self.require_store()
        record = await asyncio.to_thread(store.get_prediction, prediction_id)
        if store.inputs_dir is None or not record.get("input_sha256"):
            raise NotFoundError(
                f"inputs are not stored on this server (store_inputs is off), so there is no {purpose}."
            )
        await asyncio.to_thread(store.flush)
        path = store.input_path(record["input_sha256"])
        if not path.is_file() and record.get("input_format") == "crop":
            from radflow.store import materialize_crop

            cut = await asyncio.to_thread(materialize_crop, store.inputs_dir, record["input_sha256"], record["outputs"])
            path = cut or path
        if not path.is_file():
            raise NotFoundError(f"the input image of prediction {prediction_id} is no longer stored.")
        return record, path

    async def heatmap(self, prediction_id: str, label: str) -> bytes:
        """The CAM overlay of ``label`` for a logged prediction, drawn from the stored input pixels."""
        record, path = await self.stored_input(prediction_id, "heatmap")
        router = self.require_router()
        found = router.find(record["model_name"], record["model_version"])
        if found is None and record.get("workflow"):
            raise NotFoundError(
                f"prediction {prediction_id} is step {record.get('step')!r} of workflow {record['workflow']!r}, by "
                f"{record['model_name']} version {record['model_version']}, which this server does not serve as "
                "its own model: no heatmap is drawn for it."
            )
        arm = found or router.champion

        def draw() -> bytes:
            pixels = decode_image(path.read_bytes(), name=str(path), max_pixels=self.settings.max_pixels).pixels
            if self.gate is None:
                return arm.model.heatmap_png(pixels, label)
            with self.gate.exclusive():
                return arm.model.heatmap_png(pixels, label)

        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, draw)

    async def mask_png(self, prediction_id: str, structure: str | None = None) -> bytes:
        """A logged segmentation answer's mask as PNG, decoded from its stored RLE (the input is not needed).

        One ``structure``: black/white; none: all structures in one label PNG
        (:func:`radflow.runtime.masks.encode_label_png`). A prediction without masks or an unknown
        structure is an :class:`InvalidInputError` naming what there is.
        """
        from radflow.runtime.masks import decode_rle, encode_label_png, encode_mask_png

        record = await self.get_prediction(prediction_id)
        structures = (record.get("outputs") or {}).get("structures")
        if not isinstance(structures, list) or not structures:
            raise InvalidInputError(
                f"prediction {prediction_id} is from a {record.get('model_name', '')!r} model that answers no masks; "
                "mask.png is for segmentation models."
            )
        names = [str(s["structure"]) for s in structures]
        if structure is not None and structure not in names:
            raise InvalidInputError(
                f"unknown structure {structure!r}; prediction {prediction_id} has {', '.join(names)}."
                f"{did_you_mean(structure, names)}"
            )

        def draw() -> bytes:
            if structure is not None:
                entry = structures[names.index(structure)]
                return encode_mask_png(decode_rle(entry["rle"], f"prediction {prediction_id} {structure}"))
            masks = [decode_rle(s["rle"], f"prediction {prediction_id} {s['structure']}") for s in structures]
            return encode_label_png(np.stack(masks))

        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, draw)

    async def dicom_seg(self, answer: dict[str, Any], data: bytes) -> bytes:
        """The DICOM SEG of a segmentation ``answer`` (:meth:`predict`'s) on its DICOM upload ``data``.

        Built in the request from the uploaded bytes and the answer's RLE masks (at the source's Rows x
        Columns): only :func:`radflow.runtime.dicom_seg.reference_attributes` of the source reach the SEG,
        and neither the source's patient attributes nor the SEG are logged or stored.
        """
        from radflow.pacs.results import build_seg
        from radflow.runtime.dicom_seg import encode_dicom_seg
        from radflow.runtime.dicom_sr import read_source

        structures = answer.get("structures")
        if not isinstance(structures, list) or not structures:
            raise InvalidInputError(
                f"model {answer['model']['name']!r} answers no masks; format=dicom-seg is for segmentation models."
            )

        def build() -> bytes:
            return encode_dicom_seg(build_seg(read_source(data), answer))

        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, build)

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
            for loaded in (new_champion, new_challenger):
                if loaded is not None:
                    await asyncio.to_thread(self._track, loaded)
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

    async def promote(self, version: str, force: bool = False) -> dict[str, Any]:
        """Make registry ``version`` the champion, then reload (the admin endpoint and the auto rule)."""
        from radflow.registry import promote as registry_promote

        s = self.settings
        result = await asyncio.to_thread(
            registry_promote, s.model_name, version, s.resolved_tracking_uri(), force=force
        )
        return {"registry": result, "routing": await self.reload()}

    async def rollback(self) -> dict[str, Any]:
        """Give the champion alias back to the previous champion, then reload."""
        from radflow.registry import rollback as registry_rollback

        s = self.settings
        result = await asyncio.to_thread(registry_rollback, s.model_name, s.resolved_tracking_uri())
        return {"registry": result, "routing": await self.reload()}

    # -- monitoring -------------------------------------------------------------------------

    def _record_drift(self, reports: dict[str, Any], raised: list[DriftAlert]) -> list[dict[str, Any]]:
        """Gauges for every score; a durable row per new event and a counter increment per crossing (in a thread)."""
        self.metrics.observe_drift(reports)
        rows = []
        for alert in raised:
            log.warning("drift alert: %s", alert.message)
            for crossing in alert.crossings:  # one alert per event; the counter counts its crossings
                labels = ("drift", alert.model, alert.version, crossing["feature"], crossing["statistic"])
                self.metrics.alerts.labels(*labels).inc()
            if self.store is not None:
                rows.append(
                    self.store.add_alert(
                        "drift",
                        alert.message,
                        model_name=alert.model,
                        model_version=alert.version,
                        feature=alert.feature,
                        statistic=alert.statistic,
                        score=alert.score,
                        threshold=alert.threshold,
                        details=alert.details,
                    )
                )
        return rows

    def _evaluate_drift_sync(self) -> dict[str, Any]:
        if self.drift is None:
            return {}
        reports, raised = self.drift.evaluate()
        self._record_drift(reports, raised)
        return reports

    async def evaluate_drift(self) -> dict[str, Any]:
        """Score every model version's window now (in a thread); record crossings. ``{"MODEL/VERSION": report}``."""
        return await asyncio.to_thread(self._evaluate_drift_sync)

    async def monitoring(self, alerts: int = 20) -> dict[str, Any]:
        """The ``GET /v1/monitoring`` answer (shape documented on the endpoint)."""
        store = self.require_store()
        if self.drift is None:
            drift: dict[str, Any] = {"enabled": False}
        else:
            drift = {"enabled": True, "models": await self.evaluate_drift()}
        answer: dict[str, Any] = {"drift": drift}
        try:
            from radflow.monitor import online
        except ImportError:  # online evaluation is optional: the answer simply has no "online"
            online = None  # type: ignore[assignment]
        if online is not None:
            try:
                answer["online"] = await asyncio.to_thread(
                    online.online_report, store, window=self.settings.online_window
                )
            except Exception as exc:  # online evaluation failing must not hide drift
                log.exception("online evaluation failed")
                answer["online"] = {"error": f"online evaluation failed: {type(exc).__name__}: {exc}"}
        answer["alerts"] = await asyncio.to_thread(store.alerts, alerts)
        return answer

    async def apply_auto_rule(self) -> dict[str, Any] | None:
        """One look of the auto rule: online report -> decision -> promote/roll back the challenger; None = no action.

        ``promote`` makes the challenger the champion (through the registry when it came from there,
        else by reloading it as the champion) and drops the challenger arm; ``rollback`` takes the
        challenger out of traffic (the champion stays). Each action is recorded as an ``auto_rule``
        alert row.
        """
        from radflow.monitor.autorule import AutoRule, decide
        from radflow.monitor.online import online_report

        s = self.settings
        router = self.require_router()
        store = self.require_store()
        challenger = router.challenger
        if challenger is None:
            return None
        report = await asyncio.to_thread(online_report, store, window=s.online_window)
        rule = AutoRule(
            enabled=True, min_feedback=s.auto_rule_min_feedback, metric=s.auto_rule_metric, margin=s.auto_rule_margin
        )
        decision = decide(report, rule, challenger_version=challenger.version)
        if not decision:
            return None
        action, reason = str(decision["action"]), str(decision.get("reason", ""))
        if action == "promote":
            if challenger.loaded.in_registry:
                from radflow.registry import promote as registry_promote

                await asyncio.to_thread(registry_promote, s.model_name, challenger.version, s.resolved_tracking_uri())
                routing = await self.reload(drop_challenger=True)
            else:
                routing = await self.reload(model=challenger.loaded.uri, drop_challenger=True)
        elif action == "rollback":
            routing = await self.reload(drop_challenger=True)
        else:
            log.warning("the auto rule returned an unknown action %r; ignored", action)
            return None
        message = f"auto rule: {action} of {challenger.name} v{challenger.version} ({reason})"
        log.warning(message)
        self.metrics.alerts.labels("auto_rule", challenger.name, challenger.version, "", action).inc()
        await asyncio.to_thread(
            store.add_alert,
            "auto_rule",
            message,
            model_name=challenger.name,
            model_version=challenger.version,
            statistic=action,
            details={"decision": decision, "routing": routing},
        )
        return {"action": action, "reason": reason, "routing": routing}
