"""``radflow simulate``: a clinic's traffic against a running radflow service.

Images arrive as a Poisson process (one at a time, or in worklist bursts), optionally with injected
drift; a fraction of answered predictions gets its ground truth posted back as feedback, as a reader
would. Feedback can become training data (``radflow feedback export``, ``radflow loop``), so by
default the images are a clinic pool of new phantom patients (:mod:`radflow.sim.clinic`), disjoint
from every split a model is gated on. ``split`` sends a dataset split instead; val and test traffic
is marked held out (a warning in the summary) and feedback export refuses it.

The load is open-loop: arrivals keep their schedule when the server slows down, and a bounded
number of requests is in flight at once (arrivals beyond it wait their turn).

Everything is prepared in arrival order from one seeded generator (which case, its drift noise,
whether it gets feedback), so the same seed sends the same images with the same feedback.
:func:`start_background` runs a simulation in a thread for ``radflow demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from radflow.data.dataset import Dataset
from radflow.errors import ConfigError, RadflowError
from radflow.runtime.cam import encode_png
from radflow.sim.arrivals import arrivals
from radflow.sim.clinic import ClinicPool, build_clinic_pool
from radflow.sim.drift import DriftSpec, apply_drift
from radflow.sim.traffic import Case, CaseSource, feedback_payload
from radflow.sim.triage import ReadStudy, triage_report, truly_urgent
from radflow.tasks import get_task
from radflow.triage import urgency

__all__ = [
    "BackgroundSimulation",
    "SimulationConfig",
    "SimulationSummary",
    "Simulator",
    "check_server",
    "held_out_warning",
    "simulate",
    "start_background",
]

DEFAULT_READER = "simulator"
MAX_BACKLOG = 1000
"""Arrived requests allowed to wait for a connection; beyond it new arrivals are dropped (bounded memory)."""
MAX_READ = 20_000
"""Answered studies the triage figure is computed over (the latest; bounded memory in a long demo)."""


@dataclass(frozen=True)
class SimulationConfig:
    """What to send, how fast and for how long."""

    url: str
    """Base URL of the service, e.g. http://127.0.0.1:8000."""
    dataset: Path
    """A radflow dataset (made by ``radflow ingest``, split by ``radflow split``)."""
    rate: float = 2.0
    """Mean images per second (both modes)."""
    mode: Literal["single", "batch"] = "single"
    duration: float | None = 60.0
    """Seconds to send for; ``None`` runs until :meth:`Simulator.stop`."""
    drift: DriftSpec = field(default_factory=DriftSpec)
    feedback_rate: float = 0.0
    """Fraction of answered predictions that get ground-truth feedback."""
    seed: int = 0
    split: str | None = None
    """A dataset split to send (train, val, test or all); None: the clinic pool of new patients."""
    clinic_images: int = 100
    """Phantoms in the clinic pool (sent in a reshuffled cycle)."""
    batch_size: float = 8.0
    """Mean images per worklist burst in batch mode."""
    concurrency: int = 16
    """Most requests in flight at once."""
    timeout: float = 30.0
    """Seconds before one request counts as failed ("timeout")."""
    reader: str = DEFAULT_READER
    """Reader id written with each feedback."""
    wait_ready: float = 0.0
    """Seconds to wait for ``/v2/health/ready`` before sending (0: send at once)."""
    urgent: dict[str, float] = field(default_factory=dict)
    """Per-label urgency thresholds of the triage figure (the worklist's ``kafka.urgent``); none: positive findings."""
    readers: int = 1
    """Radiologists of the modelled reading room (:mod:`radflow.sim.triage`)."""
    read_seconds: float | None = None
    """Seconds one read takes in the reading room; None: a load of 0.9 at ``rate``."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"URL {self.url!r} must start with http:// or https://, e.g. http://127.0.0.1:8000.")
        if not self.rate > 0:
            raise ConfigError(f"--rate must be > 0 images per second, got {self.rate:g}.")
        if self.mode not in ("single", "batch"):
            raise ConfigError(f"--mode must be 'single' or 'batch', got {self.mode!r}.")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"--duration must be > 0 seconds, got {self.duration:g}.")
        if not 0.0 <= self.feedback_rate <= 1.0:
            raise ConfigError(f"--feedback-rate must be between 0 and 1, got {self.feedback_rate:g}.")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size:g}.")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {self.concurrency}.")
        if not self.timeout > 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {self.timeout:g}.")
        if self.clinic_images < 1:
            raise ConfigError(f"--clinic-images must be at least 1, got {self.clinic_images}.")
        if self.readers < 1:
            raise ConfigError(f"--readers must be at least 1, got {self.readers}.")
        if self.read_seconds is not None and not self.read_seconds > 0:
            raise ConfigError(f"--read-seconds must be > 0, got {self.read_seconds:g}.")
        for label, threshold in self.urgent.items():
            if not 0.0 <= threshold <= 1.0:
                raise ConfigError(f"--urgent {label}={threshold:g}: a threshold is a probability in [0, 1].")

    @property
    def source(self) -> str:
        """What is sent: ``clinic`` or ``split:NAME``."""
        return "clinic" if self.split is None else f"split:{self.split}"

    @property
    def held_out(self) -> bool:
        """True when the traffic includes images models are gated on (val or test): never training data."""
        return self.split in ("val", "test", "all")


def held_out_warning(split: str) -> str:
    """What the summary says when held-out images are sent."""
    return (
        f"the {split!r} split {'holds' if split == 'all' else 'is'} held-out images: models are gated on them, so "
        "this traffic's feedback can never train a model (`radflow feedback export` refuses these images); "
        "leave --split out to send the clinic's new patients."
    )


@dataclass
class SimulationSummary:
    """Counts and client-side latencies of one simulation (a live snapshot while it runs)."""

    url: str
    mode: str
    target_rate: float
    drift: DriftSpec
    source: str
    """``clinic`` (new phantom patients) or ``split:NAME``."""
    dataset_version: str
    clinic: dict[str, Any] | None = None
    """The clinic pool: kind, images, patients, phantoms dropped as resembling a dataset image."""
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    """Length of the sending window (the answers of the last requests may come after it)."""
    arrived: int = 0
    """Images whose arrival time came (``arrived - sent``: dropped by stop() or a full backlog)."""
    sent: int = 0
    answered: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """Failed requests by HTTP status ("503") or client error ("timeout", "ConnectError")."""
    feedback_posted: int = 0
    feedback_failed: Counter[str] = field(default_factory=Counter)
    feedback_skipped: int = 0
    """Chosen for feedback but without ground truth the model takes (unknown labels only)."""
    arms: Counter[str] = field(default_factory=Counter)
    """Answers per model version and arm."""
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    interrupted: bool = False
    read: deque[ReadStudy] = field(default_factory=lambda: deque(maxlen=MAX_READ), repr=False)
    """The latest answered classification studies: arrival, answer time, urgency, truth (the triage figure)."""
    readers: int = 1
    read_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        elapsed = max(self.elapsed_s, 1e-9)
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        latency = (
            {
                "p50": round(float(np.percentile(lat, 50)), 2),
                "p95": round(float(np.percentile(lat, 95)), 2),
                "p99": round(float(np.percentile(lat, 99)), 2),
                "mean": round(float(lat.mean()), 2),
                "max": round(float(lat.max()), 2),
            }
            if len(lat)
            else None
        )
        return {
            "url": self.url,
            "mode": self.mode,
            "source": self.source,
            "clinic": self.clinic,
            "warnings": list(self.warnings),
            "dataset_version": self.dataset_version,
            "drift": self.drift.to_dict(),
            "target_rate": self.target_rate,
            "elapsed_s": round(self.elapsed_s, 3),
            "arrived": self.arrived,
            "sent": self.sent,
            "not_sent": self.arrived - self.sent,
            "answered": self.answered,
            "failed": dict(sorted(self.failed.items())),
            "feedback_posted": self.feedback_posted,
            "feedback_failed": dict(sorted(self.feedback_failed.items())),
            "feedback_skipped": self.feedback_skipped,
            "achieved_rate": round(self.sent / elapsed, 3),
            "answered_rate": round(self.answered / elapsed, 3),
            "latency_ms": latency,
            "arms": dict(sorted(self.arms.items())),
            "triage": triage_report(list(self.read), self.target_rate, self.read_seconds, self.readers)
            if self.read
            else None,
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class _Request:
    case: Case
    body: bytes
    feedback: bool


class Simulator:
    """One simulation; :meth:`run` it in an event loop, :meth:`stop` it from any thread."""

    def __init__(self, config: SimulationConfig, cases: CaseSource | None = None):
        self.config = config
        self.clinic: ClinicPool | None = None
        self._dataset = Dataset.open(config.dataset) if cases is None else cases.dataset
        if cases is None and config.split is not None:  # at once: a bad or empty split is named before sending
            cases = CaseSource(self._dataset, config.split, seed=config.seed)
        self._cases = cases
        self._rng = np.random.default_rng(config.seed)
        self.summary = SimulationSummary(
            url=config.url,
            mode=config.mode,
            target_rate=config.rate,
            drift=config.drift,
            source=config.source,
            dataset_version=self._dataset.version,
            warnings=[held_out_warning(str(config.split))] if config.held_out else [],
            readers=config.readers,
            read_seconds=config.read_seconds,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()

    @property
    def cases(self) -> CaseSource:
        """What is sent; the clinic pool is made on first use (seconds), which :meth:`run` does off the event loop."""
        if self._cases is None:
            self.clinic = build_clinic_pool(self._dataset, self.config.clinic_images, seed=self.config.seed)
            self.summary.clinic = self.clinic.to_dict()
            self._cases = CaseSource(self.clinic.dataset, "all", seed=self.config.seed)
        return self._cases

    def stop(self) -> None:
        """Stop sending (safe from any thread and from a signal handler); in-flight requests finish."""
        self._stop_requested.set()
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: the run is over anyway
                self._loop.call_soon_threadsafe(self._stop.set)

    def prepare(self) -> _Request:
        """The next request: a case, its (drifted) PNG bytes and whether it gets feedback."""
        case = self.cases.next()
        pixels = apply_drift(case.pixels, self.config.drift, self._rng)
        feedback = bool(self._rng.random() < self.config.feedback_rate)
        return _Request(case, encode_png(pixels), feedback)

    async def run(self, handle_signals: bool = False) -> SimulationSummary:
        """Send until the duration ends or :meth:`stop` is called; then let in-flight requests finish."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop.set()
        # signal handlers can only be installed from the main thread (not in a background simulation)
        handle_signals = handle_signals and threading.current_thread() is threading.main_thread()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._interrupt)
        limits = httpx.Limits(
            max_connections=self.config.concurrency, max_keepalive_connections=self.config.concurrency
        )
        try:
            async with httpx.AsyncClient(
                base_url=self.config.url.rstrip("/"), timeout=self.config.timeout, limits=limits
            ) as client:
                await asyncio.to_thread(lambda: self.cases)
                await self._wait_ready()
                await self._send_all(client)
        finally:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(sig)
        return self.summary

    def _interrupt(self) -> None:
        self.summary.interrupted = True
        self.stop()

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep ``seconds``; True when stopped meanwhile."""
        assert self._stop is not None
        if seconds <= 0:
            return self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _wait_ready(self) -> None:
        from radflow.serve.server import wait_ready

        stop = self._stop
        assert stop is not None
        # In a thread: the one (blocking) readiness wait, given up early when the simulation is stopped.
        await asyncio.to_thread(wait_ready, self.config.url, self.config.wait_ready, lambda: not stop.is_set(), 0.25)

    async def _send_all(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        slots = asyncio.Semaphore(cfg.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        try:
            for at, n in arrivals(cfg.rate, self._rng, cfg.mode, cfg.batch_size):
                if cfg.duration is not None and at >= cfg.duration:
                    await self._sleep_or_stop(cfg.duration - (time.monotonic() - start))
                    break
                if await self._sleep_or_stop(at - (time.monotonic() - start)):
                    break
                for _ in range(n):
                    self.summary.arrived += 1
                    if len(tasks) >= cfg.concurrency + MAX_BACKLOG:
                        continue  # the server fell far behind: this image is dropped (counted as not sent)
                    request = self.prepare()
                    task = asyncio.create_task(self._one(client, slots, request, at, start))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                self.summary.elapsed_s = time.monotonic() - start
            self.summary.elapsed_s = time.monotonic() - start  # the sending window: rates are per this
            # requests that arrived in the window are still sent and answered (bounded by the request
            # timeout); after stop() or Ctrl-C, the ones still waiting for a connection are not sent
            if tasks:
                await asyncio.wait(set(tasks), timeout=cfg.timeout + 1.0)
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(
        self, client: httpx.AsyncClient, slots: asyncio.Semaphore, request: _Request, at: float, start: float
    ) -> None:
        s = self.summary
        case = request.case
        async with slots:
            if self._stop is not None and self._stop.is_set():
                return  # stopped while waiting for a connection: never sent
            s.sent += 1
            params = {"sex": case.sex} if "sex" in get_task(self.cases.task).extra_inputs and case.sex else None
            headers = {"content-type": "image/png", "x-routing-key": case.study}
            t0 = time.perf_counter()
            try:
                response = await client.post("/v1/predict", content=request.body, headers=headers, params=params)
            except asyncio.CancelledError:  # still unanswered when the drain ended
                s.failed["cancelled"] += 1
                raise
            except httpx.TimeoutException:
                s.failed["timeout"] += 1
                return
            except httpx.HTTPError as exc:
                s.failed[type(exc).__name__] += 1
                return
            if response.status_code != 200:
                s.failed[str(response.status_code)] += 1
                return
            s.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            s.answered += 1
            answer = response.json()
            if answer.get("findings"):
                urgent = self.config.urgent
                s.read.append(
                    ReadStudy(at, time.monotonic() - start, urgency(answer, urgent), truly_urgent(case.truth, urgent))
                )
            model = answer.get("model") or {}
            s.arms[f"{model.get('name', '?')} v{model.get('version', '?')} ({answer.get('arm', '?')})"] += 1
            if request.feedback:
                await self._feedback(client, answer, case)

    async def _feedback(self, client: httpx.AsyncClient, answer: dict[str, Any], case: Case) -> None:
        s = self.summary
        body = feedback_payload(answer, case.truth, self.config.reader)
        if body is None:
            s.feedback_skipped += 1
            return
        try:
            response = await client.post("/v1/feedback", json=body)
        except httpx.HTTPError as exc:
            s.feedback_failed["timeout" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__] += 1
            return
        if response.status_code == 201:
            s.feedback_posted += 1
        else:
            s.feedback_failed[str(response.status_code)] += 1


def check_server(url: str, timeout: float = 5.0) -> None:
    """Fail at once, with one clear line, when nothing answers at ``url`` (rather than count every request failed)."""
    try:
        httpx.get(url.rstrip("/") + "/v2/health/live", timeout=timeout)
    except httpx.HTTPError as exc:
        raise RadflowError(
            f"cannot reach a radflow server at {url} ({type(exc).__name__}: {exc}); start one with `radflow serve`."
        ) from None


def simulate(config: SimulationConfig, handle_signals: bool = True) -> SimulationSummary:
    """Run a simulation to its end in a fresh event loop; with ``handle_signals`` Ctrl-C stops it cleanly."""
    simulator = Simulator(config)
    if config.wait_ready <= 0:
        check_server(config.url)
    return asyncio.run(simulator.run(handle_signals=handle_signals))


class BackgroundSimulation:
    """A simulation running in a daemon thread (for ``radflow demo``): :meth:`stop` ends it and returns its summary."""

    def __init__(self, simulator: Simulator):
        self.simulator = simulator
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="radflow-simulate", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self.simulator.run())
        except BaseException as exc:  # reported by stop()/join(); a thread cannot raise to its starter
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def summary(self) -> dict[str, Any]:
        """A live snapshot of the counts."""
        return self.simulator.summary.to_dict()

    def join(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the simulation to end on its own (its duration); returns the summary."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.summary

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop sending, wait up to ``timeout`` s for in-flight requests; returns the summary."""
        self.simulator.stop()
        return self.join(timeout)


def start_background(
    url: str,
    dataset: str | Path,
    *,
    rate: float = 1.0,
    duration: float | None = None,
    feedback_rate: float = 0.3,
    wait_ready: float = 60.0,
    **options: Any,
) -> BackgroundSimulation:
    """Start a simulation in a background thread; ``duration=None`` runs until ``handle.stop()``.

    ``wait_ready`` waits for the service to become ready first (a demo starts both at once).
    Other ``options`` are :class:`SimulationConfig` fields (``drift``, ``mode``, ``seed``, ...).
    """
    config = SimulationConfig(
        url=url,
        dataset=Path(dataset),
        rate=rate,
        duration=duration,
        feedback_rate=feedback_rate,
        wait_ready=wait_ready,
        **options,
    )
    return BackgroundSimulation(Simulator(config))
