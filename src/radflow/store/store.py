"""The prediction log, feedback and alerts (SQLAlchemy 2: SQLite WAL by default, PostgreSQL by URL).

Predictions are written behind the request by one writer thread in small transactions (so logging
never holds a request up, and one commit serves every prediction that arrived while the last one was
written); a read of a prediction still in the writer's queue is answered from memory, and
:meth:`Store.flush` writes what is queued at once. Feedback is committed before the handler answers
201 (SQLite: WAL, ``synchronous=FULL``), after the prediction it names, so an acknowledged label
survives a crash. Inputs are kept as 8-bit grey PNGs named by the sha256 of the upload, so the same
image is stored once: an upload that already is one, holding nothing but its pixels, is kept as sent
(no re-encoding); any other is encoded from its decoded pixels. No PHI is stored: uploads are
hashed, DICOM headers and PNG text chunks are dropped, and only model outputs and model identity are
logged. Opening a store migrates its schema (:mod:`radflow.store.migrations`).

Writes are idempotent by prediction id: a message-driven door (the Kafka worker) names the id of the
prediction it is about to make (:func:`prediction_id_scope`), and a row whose id is already written
is skipped, so a redelivered message leaves one row however often it is scored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import orjson
from sqlalchemy import Insert, create_engine, event, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from radflow.errors import NotFoundError, RadflowError
from radflow.runtime.cam import encode_png, to_grey8
from radflow.store.migrations import migrate, schema_version
from radflow.store.schema import ALERTS, FEEDBACK, PREDICTIONS, public, utc

__all__ = [
    "PredictionRecord",
    "Store",
    "StoreUnavailableError",
    "input_path",
    "materialize_crop",
    "new_prediction_ids",
    "plain_grey_png",
    "prediction_id_scope",
    "sqlite_file",
    "study_key",
]

log = logging.getLogger(__name__)

_MAX_BATCH = 256
"""Predictions written in one transaction at most."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIXEL_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND"})


class StoreUnavailableError(RadflowError):
    """The database could not be reached or read (a wrong URL, a server down, a damaged file)."""

    status_code = 503


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for another database or an in-memory one)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def input_path(inputs_dir: Path, sha: str) -> Path:
    """Where the stored input with content hash ``sha`` lives under ``inputs_dir`` (whether or not it exists)."""
    return Path(inputs_dir) / sha[:2] / f"{sha}.png"


def materialize_crop(inputs_dir: Path, sha: str, outputs: Mapping[str, Any]) -> Path | None:
    """The stored input of a workflow crop row, cut from its stored whole image on first use; None without one.

    A served workflow logs each crop as its own prediction, but does not write each crop's PNG when it answers
    (one file per crop was most of the log's cost): the row's ``outputs.crop`` says where it was cut (``box``,
    upload pixels) and from which stored image (``image_sha256``), and the crop is written the first time a
    reader (the UI, Label Studio, a feedback export) asks for it, under the row's ``input_sha256``.
    """
    path = input_path(inputs_dir, sha)
    if path.is_file():
        return path
    crop = outputs.get("crop") or {}
    whole, box = crop.get("image_sha256"), crop.get("box")
    source = input_path(inputs_dir, str(whole)) if whole else None
    if source is None or not box or not source.is_file():
        return None
    grey = cv2.imdecode(np.frombuffer(source.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    x0, y0, x1, y1 = (int(v) for v in box)
    cut = grey[max(0, y0) : y1, max(0, x0) : x1] if grey is not None else None
    if cut is None or cut.size == 0:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(encode_png(np.ascontiguousarray(cut)))
    tmp.replace(path)
    return path


def plain_grey_png(data: bytes) -> bool:
    """Whether ``data`` is an 8-bit grey PNG of nothing but its pixels (IHDR, IDAT, IEND): stored as sent.

    Such a file decodes to exactly the pixels the store would encode, so storing it unchanged saves the
    encoding. Any other chunk (text, EXIF, ICC profile, time) may carry what a DICOM header would, and
    bytes after IEND may hide anything: those files are stored re-encoded from their pixels instead.
    """
    # IHDR is the first chunk: length, type, width, height, then bit depth and colour type (0: grey)
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x00":
        return False
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind not in _PIXEL_CHUNKS:
            return False
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return pos == len(data)
    return False


def study_key(routing_key: str | None) -> str | None:
    """What the store keeps of a request's routing key (sha256 hex): enough to match a known study id, not the key."""
    if not routing_key:
        return None
    return hashlib.sha256(routing_key.encode()).hexdigest()


@dataclass
class PredictionRecord:
    """One logged prediction (``outputs`` is the answer's findings or prediction)."""

    model_name: str
    model_version: str
    model_alias: str | None
    arm: str
    outputs: dict[str, Any]
    input_sha256: str | None = None
    input_format: str | None = None
    latency_ms: float | None = None
    shadow: bool = False
    request_id: str | None = None
    study_key: str | None = None
    """:func:`study_key` of the request's routing key."""
    modality: str | None = None
    """The input's DICOM Modality (``CR``, ``DX``, ...), None for other formats."""
    workflow: str | None = None
    """The workflow whose step this answer is (:mod:`radflow.workflow`), None for a model's own answer."""
    step: str | None = None
    """The workflow step that ran the model."""
    id: str = field(default_factory=lambda: new_prediction_ids(1)[0])
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in PREDICTIONS.columns.keys()}  # noqa: SIM118
        row["created_at"] = utc(self.created_at)  # SQLite keeps the wall time it is given: make it UTC's
        return row


def new_prediction_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs, the ids of predictions, from one read of the OS's random source.

    A workflow answer logs a row per crop: one ``os.urandom`` call (which lets go of the GIL, and waits to
    get it back behind the other requests' threads) instead of one per row.
    """
    raw = os.urandom(16 * n)
    return [str(uuid.UUID(bytes=raw[i : i + 16], version=4)) for i in range(0, 16 * n, 16)]


_PREDICTION_ID: ContextVar[str | None] = ContextVar("radflow_prediction_id", default=None)


@contextmanager
def prediction_id_scope(prediction_id: str) -> Iterator[None]:
    """Within this block, the served prediction logged (not a shadow one) takes the id ``prediction_id``.

    A door whose input has an id of its own (a Kafka message) makes that its prediction's id, so the same
    input scored twice (a redelivery after a crash) is the same row: :meth:`Store.log` skips an id it has
    written. A context variable, so the inference core's logging needs no door-specific argument; tasks
    started inside the block (the shadow scoring) inherit it, and shadow rows keep their own ids.
    """
    token = _PREDICTION_ID.set(prediction_id)
    try:
        yield
    finally:
        _PREDICTION_ID.reset(token)


def _insert_new(engine: Engine) -> Insert:
    """INSERT of prediction rows that skips an id already written (the idempotent write); plain INSERT elsewhere."""
    if engine.dialect.name == "sqlite":
        return sqlite.insert(PREDICTIONS).on_conflict_do_nothing(index_elements=["id"])
    if engine.dialect.name == "postgresql":
        return postgresql.insert(PREDICTIONS).on_conflict_do_nothing(index_elements=["id"])
    return insert(PREDICTIONS)


def _json_text(value: Any) -> str:
    """A JSON column's text, by orjson: the writer encodes every row's outputs, several times faster than ``json``.

    NumPy values are taken as numbers; NaN and infinities are written as null, JSON every database reads
    (``json`` wrote NaN, which PostgreSQL's json type refuses).
    """
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def _unique_rows(records: list[PredictionRecord]) -> list[dict[str, Any]]:
    """Rows of ``records``, the first of each id only (ON CONFLICT does not cover two of one id in one statement)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        rows.setdefault(r.id, r.to_row())
    return list(rows.values())


@dataclass
class _Queued:
    """One prediction waiting for the writer, with what its stored input is made from."""

    seq: int
    at: float
    """When it was queued (``time.monotonic``)."""
    record: PredictionRecord
    pixels: np.ndarray | None
    upload: bytes | None


_FLUSH = "flush"
"""Queue marker: write what is queued now."""
_STOP = "stop"
"""Queue marker: write what is queued, then end the writer."""


class Store:
    """Prediction log, feedback, alerts and stored inputs; thread-safe. Reads: :mod:`radflow.store.queries`.

    ``create=False`` opens only an existing store (NotFoundError otherwise): readers such as
    ``radflow feedback export`` must not leave an empty database behind a mistyped path.
    ``write_window_s``: under load, how long the writer waits after a prediction for more to share
    its transaction (0: write at once; a flush never waits it out).
    """

    def __init__(self, url: str, inputs_dir: Path | None = None, *, create: bool = True, write_window_s: float = 0.0):
        self.url = url
        file = sqlite_file(url)
        if file is not None and not create and not file.is_file():
            raise NotFoundError(
                f"no prediction store at {file}; the server writes it (serving.db in the workspace), "
                "or pass --store-url."
            )
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(url, pool_pre_ping=True, json_serializer=_json_text)
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(f"cannot open the prediction store {url}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)
        try:
            if not create:
                with self.engine.connect() as conn:
                    if schema_version(conn) is None:
                        raise NotFoundError(f"{url} is not a radflow prediction store (no predictions table).")
            self.schema_migrated_from, self.schema_version = migrate(self.engine)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            raise StoreUnavailableError(
                f"cannot open the prediction store {where}: {exc.__class__.__name__}: {exc}"
            ) from None
        except BaseException:
            self.engine.dispose()
            raise
        self.inputs_dir = inputs_dir
        self.write_window_s = write_window_s
        self._queue: queue.Queue[list[_Queued] | str] = queue.Queue()
        self._pending: dict[str, PredictionRecord] = {}
        self._logged = 0  # predictions queued so far; the writer takes them in this order
        self._written = 0  # of those, how many the writer is done with
        self._last_at = float("-inf")  # when the last prediction the writer took was queued
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._writer = threading.Thread(target=self._write_loop, name="radflow-store", daemon=True)
        self._writer.start()

    # -- predictions ------------------------------------------------------------------------

    def log(self, record: PredictionRecord, pixels: np.ndarray | None = None, upload: bytes | None = None) -> None:
        """Queue a prediction for writing; its input is kept when an inputs folder is set.

        The stored input is ``upload`` itself when that is a :func:`plain_grey_png`, else ``pixels``
        (the decoded upload) encoded as an 8-bit PNG; nothing is stored without ``pixels`` or ``upload``.
        Inside :func:`prediction_id_scope` a served record takes the scope's id (set on ``record``).
        """
        self.log_all([(record, pixels, upload)])

    def log_all(self, entries: Sequence[tuple[PredictionRecord, np.ndarray | None, bytes | None]]) -> None:
        """:meth:`log` of several predictions (record, pixels, upload) in one hand-over to the writer.

        A workflow answer logs a row per crop: one lock and one wake-up of the writer for all of them.
        """
        if not entries:
            return
        scoped = _PREDICTION_ID.get()
        now = time.monotonic()
        with self._lock:
            items = []
            for record, pixels, upload in entries:
                if scoped is not None and not record.shadow:
                    record.id = scoped
                self._pending[record.id] = record
                self._logged += 1
                items.append(_Queued(self._logged, now, record, pixels, upload))
            # queued under the lock, so the queue's order is the order of ``_logged``
            self._queue.put(items)

    def _take(self) -> tuple[list[_Queued], bool]:
        """The next transaction's predictions, and whether to stop after it.

        Under load (these predictions came within ``write_window_s`` of the ones before) the writer
        waits up to ``write_window_s`` for more to share the commit; predictions after a lull are
        written at once, so a caller reading the database from outside soon sees the last one.
        """
        batch: list[_Queued] = []
        item = self._queue.get()
        window = 0.0
        if isinstance(item, list):
            window = self.write_window_s if item[0].at - self._last_at < self.write_window_s else 0.0
        deadline = time.monotonic() + window
        while isinstance(item, list):
            self._last_at = item[-1].at
            batch.extend(item)
            if len(batch) >= _MAX_BATCH:
                break
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
        return batch, item == _STOP

    def _write_loop(self) -> None:
        while True:
            batch, stop = self._take()
            if batch:
                self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_Queued]) -> None:
        records = [q.record for q in batch]
        try:
            for q in batch:
                self._save_input(q.record.input_sha256, q.pixels, q.upload)
            with self.engine.begin() as conn:
                conn.execute(_insert_new(self.engine), _unique_rows(records))
        except Exception:  # the log must not take the service down; the error is reported
            log.exception("could not write %d predictions to %s", len(records), self.url)
        with self._lock:
            for r in records:
                self._pending.pop(r.id, None)
            self._written = batch[-1].seq
            self._idle.notify_all()

    def _save_input(self, sha: str | None, pixels: np.ndarray | None, upload: bytes | None) -> None:
        if self.inputs_dir is None or sha is None or (pixels is None and upload is None):
            return
        path = self.input_path(sha)
        if path.exists():
            return
        if upload is not None and plain_grey_png(upload):
            data = upload
        elif pixels is not None:
            data = encode_png(to_grey8(pixels))
        else:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def input_path(self, sha: str) -> Path:
        """Where the input with content hash ``sha`` is (or would be) stored; needs an inputs folder."""
        if self.inputs_dir is None:
            raise NotFoundError("inputs are not stored with this prediction store (no inputs folder).")
        return input_path(self.inputs_dir, sha)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Write every prediction logged before this call now, and wait for it; False if that took over ``timeout_s``.

        Predictions logged meanwhile are not waited for, so a flush ends under any load.
        """
        with self._idle:
            target = self._logged
            if self._written >= target:
                return True
            self._queue.put(_FLUSH)
            return self._idle.wait_for(lambda: self._written >= target, timeout=timeout_s)

    def get_prediction(self, prediction_id: str) -> dict[str, Any]:
        with self._lock:
            pending = self._pending.get(prediction_id)
        if pending is not None:
            return public(pending.to_row())
        with self.engine.connect() as conn:
            row = conn.execute(select(PREDICTIONS).where(PREDICTIONS.c.id == prediction_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no prediction with id {prediction_id!r}.")
        return public(dict(row))

    def predictions(self, request_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Logged predictions, newest first (``request_id``: the champion and shadow rows of one request)."""
        self.flush()
        query = select(PREDICTIONS).order_by(PREDICTIONS.c.created_at.desc()).limit(limit)
        if request_id is not None:
            query = query.where(PREDICTIONS.c.request_id == request_id)
        with self.engine.connect() as conn:
            return [public(dict(r)) for r in conn.execute(query).mappings()]

    # -- feedback ---------------------------------------------------------------------------

    def add_feedback(
        self,
        prediction_id: str,
        labels: dict[str, Any] | None = None,
        value: float | None = None,
        correct: bool | None = None,
        reader: str | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Commit one feedback row (durable when this returns); NotFoundError for an unknown prediction."""
        self.get_prediction(prediction_id)
        with self._lock:
            queued = prediction_id in self._pending
        if queued:  # the row it refers to is written first
            self.flush()
        row = {
            "prediction_id": prediction_id,
            "created_at": datetime.now(UTC),
            "labels": labels,
            "value": value,
            "correct": correct,
            "reader": reader,
            "comment": comment,
        }
        with self.engine.begin() as conn:
            result = conn.execute(insert(FEEDBACK).returning(FEEDBACK.c.id), row)
            row["id"] = int(result.scalar_one())
        return public(row)

    def feedback(self, prediction_id: str | None = None) -> list[dict[str, Any]]:
        query = select(FEEDBACK).order_by(FEEDBACK.c.id)
        if prediction_id is not None:
            query = query.where(FEEDBACK.c.prediction_id == prediction_id)
        with self.engine.connect() as conn:
            return [public(dict(r)) for r in conn.execute(query).mappings()]

    # -- alerts ---------------------------------------------------------------------------------

    def add_alert(
        self,
        kind: str,
        message: str,
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        feature: str | None = None,
        statistic: str | None = None,
        score: float | None = None,
        threshold: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Commit one alert row (durable when this returns)."""
        row = {
            "created_at": datetime.now(UTC),
            "kind": kind,
            "model_name": model_name,
            "model_version": model_version,
            "feature": feature,
            "statistic": statistic,
            "score": score,
            "threshold": threshold,
            "message": message,
            "details": details,
        }
        with self.engine.begin() as conn:
            row["id"] = int(conn.execute(insert(ALERTS).returning(ALERTS.c.id), row).scalar_one())
        return public(row)

    def alerts(self, limit: int = 50, kind: str | None = None) -> list[dict[str, Any]]:
        """Recorded alerts, newest first."""
        query = select(ALERTS).order_by(ALERTS.c.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(ALERTS.c.kind == kind)
        with self.engine.connect() as conn:
            return [public(dict(r)) for r in conn.execute(query).mappings()]

    def close(self) -> None:
        """Write everything queued, stop the writer and release the database."""
        self._queue.put(_STOP)
        self._writer.join(timeout=30)
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
