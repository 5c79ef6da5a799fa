"""Champion/challenger routing: weighted (canary) split, sticky by routing key, shadow scoring, hot swap.

A :class:`ModelArm` is one loaded model with its own batcher. The :class:`Router` picks the arm that
answers a request: a routing key (``X-Routing-Key``) is hashed to a fixed point in [0, 1), so the
same key always lands on the same arm for a given weight; requests without a key are split at
random. In shadow mode the champion always answers and the challenger scores the same input in the
background.

Hot swap without failed requests: every request holds the arm it was routed to
(:meth:`ModelArm.acquire` at the moment it is routed, :meth:`ModelArm.release` once it is
answered, shadow scoring included). :meth:`Router.swap` installs freshly loaded arms in one
assignment — new requests go to them — and retires the old ones: an old arm keeps its batcher
running until the last request that holds it has its answer, and only then stops it. A request
that picked the old model is answered by the old model, however long its decode or queue takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from radflow.inference.batching import CpuGate, DynamicBatcher
from radflow.inference.metrics import ServiceMetrics
from radflow.inference.settings import ServeSettings
from radflow.modelref import ModelRef, ResolvedModel, parse_model_ref, resolve_model_ref
from radflow.registry.registration import GATE_TAG
from radflow.runtime import RadflowModel

__all__ = [
    "CHALLENGER_ARM",
    "CHAMPION_ARM",
    "UNREGISTERED",
    "LoadedModel",
    "ModelArm",
    "Router",
    "gate_warnings",
    "load_model",
    "route_point",
    "takes_challenger",
]

log = logging.getLogger(__name__)

CHAMPION_ARM = "champion"
CHALLENGER_ARM = "challenger"
UNREGISTERED = "unregistered"
"""The version reported for a model served from a file or a run rather than a registry version (the Open
Inference Protocol's versions are strings): a number would pass it off as registry version 1."""


@dataclass
class LoadedModel:
    """A model and where it came from (registry name, version and alias when it came from the registry).

    Built by :func:`load_model` from the same resolution its ONNX file was downloaded from, so the
    version that labels logs and metrics is the version served.
    """

    model: RadflowModel
    uri: str
    name: str
    version: str
    alias: str | None
    run_id: str | None = None
    dataset_version: str | None = None
    ref: ModelRef | None = None
    warnings: tuple[str, ...] = ()
    """What an operator must know before trusting its answers (a registry version that failed its quality
    gates, or was registered without them): logged at load, in ``/v2`` metadata and on the dashboard."""

    @property
    def in_registry(self) -> bool:
        return (self.ref or parse_model_ref(self.uri)).in_registry

    @property
    def in_mlflow(self) -> bool:
        """Its files (ONNX, drift reference) come from an MLflow run."""
        return (self.ref or parse_model_ref(self.uri)).in_mlflow


def load_model(uri: str, settings: ServeSettings) -> LoadedModel:
    """Load ``uri`` (blocking: run it in a thread) and name it for logs, metrics and the V2 API.

    The reference is resolved once; the ONNX file and the name/version come from that one answer,
    so a promotion while the model loads cannot pair one version's file with another's label.
    """
    resolved = resolve_model_ref(uri, settings.resolved_tracking_uri())
    model = RadflowModel.load(resolved, int8=settings.int8, threads=settings.threads, max_pixels=settings.max_pixels)
    if resolved.name is not None and resolved.version is not None:
        name, version = resolved.name, resolved.version
    elif resolved.path is not None and resolved.path.suffix == ".onnx":
        name, version = model.meta.name or resolved.path.stem, UNREGISTERED
    else:
        name, version = model.meta.name or settings.model_name, UNREGISTERED
    warnings = gate_warnings(resolved)
    for warning in warnings:
        log.warning("serving %s: %s", uri, warning)
    return LoadedModel(
        model,
        uri,
        name,
        version,
        resolved.alias,
        run_id=resolved.run_id,
        dataset_version=resolved.dataset_version,
        ref=resolved.ref,
        warnings=warnings,
    )


def gate_warnings(resolved: ResolvedModel) -> tuple[str, ...]:
    """A registry version's gate verdict as registration tagged it, when it is not ``passed``.

    A file or a run was never gated; its version ``unregistered`` says so.
    """
    if resolved.name is None or resolved.version is None:
        return ()
    verdict = resolved.tags.get(GATE_TAG)
    who = f"{resolved.name} version {resolved.version}"
    if verdict == "failed":
        reasons = resolved.tags.get("gate_failures") or "see `radflow models`"
        return (f"{who} FAILED its quality gates at registration ({reasons}); it is served anyway",)
    if verdict is None:
        return (f"{who} was registered without quality gates (no gate verdict); it is served ungated",)
    return ()


@dataclass(eq=False)
class ModelArm:
    """A loaded model serving one arm, with its batcher and the count of requests that hold it."""

    loaded: LoadedModel
    arm: str
    batcher: DynamicBatcher
    served: int = 0
    in_flight: int = 0
    """Requests routed here and not yet answered (shadow scoring included)."""
    retired: bool = False
    """Swapped out: no new request is routed here; the batcher stops once ``in_flight`` is 0."""
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _closing: asyncio.Task[None] | None = field(default=None, repr=False)

    def acquire(self) -> ModelArm:
        """Hold the arm for one request (on the event loop, in the same step that routed it here).

        A retired arm already stopped (a ``/v2`` request that named it before the swap and reached
        the model after) restarts its batcher: the request is still answered by the model it picked.
        """
        self.in_flight += 1
        self._idle.clear()
        if not self.batcher.running:
            self.batcher.start()
        return self

    def release(self) -> None:
        """The request holding the arm has its answer; a retired arm with none left stops its batcher."""
        self.in_flight -= 1
        if self.in_flight == 0 and self.retired and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(), name="radflow-retire")

    async def _close(self) -> None:
        try:
            while True:
                await self.batcher.close()
                # a request that came (restarting the batcher) and went while it closed: close again
                if self.in_flight > 0 or not self.batcher.running:
                    break
        finally:
            self._closing = None
            if self.in_flight == 0:
                self._idle.set()

    @contextlib.contextmanager
    def hold(self) -> Iterator[ModelArm]:
        """``acquire`` for the block, ``release`` after it."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    async def retire(self, timeout_s: float | None = None) -> bool:
        """Route nothing new here; wait until every request holding the arm is answered and the batcher stopped.

        True once stopped; False when ``timeout_s`` passed first (then the batcher still stops
        when the last request is answered). Only shutdown passes a timeout.
        """
        self.retired = True
        if self.in_flight == 0 and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(), name="radflow-retire")
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def model(self) -> RadflowModel:
        return self.loaded.model

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> str:
        return self.loaded.version

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.loaded.alias,
            "arm": self.arm,
            "uri": self.loaded.uri,
            "warnings": list(self.loaded.warnings),
        }

    @classmethod
    def create(
        cls,
        loaded: LoadedModel,
        arm: str,
        settings: ServeSettings,
        metrics: ServiceMetrics,
        gate: CpuGate | None = None,
    ) -> ModelArm:
        """Wrap a loaded model with a started batcher (call inside the event loop)."""
        session = loaded.model.session

        def run(outputs: Any, feeds: dict[str, Any]) -> list[Any]:
            return list(session.run(list(outputs), feeds))

        batcher = DynamicBatcher(
            run,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            timeout_s=settings.request_timeout_s,
            on_batch=metrics.batch_observer(loaded.name, loaded.version),
            gate=gate,
        )
        batcher.start()
        return cls(loaded, arm, batcher)


def route_point(key: str) -> float:
    """A routing key's fixed point in [0, 1): the same key always gets the same arm at a given weight."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def takes_challenger(weight: float, key: str | None, rng: random.Random) -> bool:
    """The routing rule: a request goes to the challenger when its key's point (else a random one) is below ``weight``.

    The one rule of the service's own champion/challenger (:meth:`Router.choose`) and of a workflow step's
    challenger (:mod:`radflow.serve.workflows`): one ``X-Routing-Key`` lands on the same side of both.
    """
    if weight <= 0:
        return False
    point = route_point(key) if key else rng.random()
    return point < weight


@dataclass
class Router:
    """Which arm answers; weights and shadow mode change at run time."""

    champion: ModelArm
    challenger: ModelArm | None = None
    weight: float = 0.0
    """Share of requests the challenger answers."""
    shadow: bool = False
    _rng: random.Random = field(default_factory=random.Random)

    def choose(self, key: str | None = None) -> ModelArm:
        if self.challenger is None or self.shadow:
            return self.champion
        return self.challenger if takes_challenger(self.weight, key, self._rng) else self.champion

    def shadow_arm(self) -> ModelArm | None:
        """The arm that scores in the background, or None."""
        return self.challenger if self.shadow else None

    def arms(self) -> list[ModelArm]:
        return [self.champion, *([self.challenger] if self.challenger else [])]

    def find(self, name: str, version: str | None = None) -> ModelArm | None:
        """The arm serving model ``name`` (and ``version``; default: the champion's when it matches)."""
        for arm in self.arms():
            if arm.name == name and (version is None or arm.version == version):
                return arm
        return None

    async def swap(self, champion: ModelArm, challenger: ModelArm | None) -> None:
        """Install new arms (new requests go to them at once), then wait until the old ones have answered theirs."""
        old = [a for a in self.arms() if a is not champion and a is not challenger]
        self.champion, self.challenger = champion, challenger
        if challenger is None:
            self.weight, self.shadow = 0.0, False
        await asyncio.gather(*(a.retire() for a in old))

    def state(self) -> dict[str, Any]:
        return {
            "champion": self.champion.info(),
            "challenger": self.challenger.info() if self.challenger else None,
            "challenger_weight": self.weight,
            "shadow": self.shadow,
        }
