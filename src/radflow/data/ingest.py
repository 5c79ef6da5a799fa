"""Ingest: a source (label table + images) to a versioned, de-identified, preprocessed dataset.

Stages: read the source table (no pixels) -> hash, decode and preprocess every image on all
cores -> write pixel shards and the manifest. Properties users rely on:

* De-identification: patient and study identifiers are replaced by an HMAC-SHA256 keyed with
  a per-workspace salt kept OUTSIDE the dataset (``.radflow-salt`` beside it by default), so
  the dataset can be shared without making the hashes reversible by guessing IDs. No name,
  birth date or other header text is ever copied: only whitelisted attributes (sex, age,
  view) reach the manifest.
* Reuse: images whose file hash and preprocessing match the existing dataset are copied
  from its shards instead of being decoded again.
* Safety: new shards and manifest are written beside the old ones and swapped in at the
  end; a failed or interrupted ingest leaves the previous dataset intact.
* Bad files are skipped and listed in ``dataset.json`` (``strict=True`` makes them fatal).
* Extra sources (``IngestOptions.extra``, e.g. exported reader feedback) are read in the same
  format and appended as training-only rows: ``official_split`` is ``"extra"``, which
  :func:`radflow.data.split.split_dataset` keeps out of the split it draws, so the test set stays
  exactly what the main source gives. Their patients are prefixed with the folder name before
  pseudonymisation, so they can never merge with a patient of the main source; an image whose
  bytes the main source already holds is skipped as a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import multiprocessing as mp
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radflow.data.dataset import SHARD_DIR, Dataset, ShardWriter, write_dataset
from radflow.data.decode import DEFAULT_MAX_PIXELS, decode_image
from radflow.data.preprocess import PreprocessSpec, prepare_pixels
from radflow.data.sources import SourceRecord, SourceTable, read_source
from radflow.data.split import EXTRA_SPLIT
from radflow.errors import DataError, ImageDecodeError, RadflowError
from radflow.hardware import available_cores

__all__ = ["IngestOptions", "ingest", "load_salt", "pseudonymize"]

SALT_FILE = ".radflow-salt"
IN_PROCESS_BELOW = 48
"""Sources smaller than this are processed without a worker pool (start-up costs more)."""


@dataclass(frozen=True)
class IngestOptions:
    size: int = 256
    uncertain: str = "zeros"
    labels: str | list[str] | None = None
    frontal_only: bool = False
    strict: bool = False
    workers: int | None = None
    labels_csv: Path | None = None
    salt_file: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    extra: tuple[Path, ...] = ()
    """Folders of extra training-only data in the same format (see the module docstring)."""


def load_salt(path: Path) -> bytes:
    """The workspace's pseudonymisation key, created on first use and stable afterwards."""
    if path.is_file():
        salt = bytes.fromhex(path.read_text().strip())
        if len(salt) < 16:
            raise DataError("salt file is too short (expected 32+ hex digits); delete it to make a new one", path)
        return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(salt.hex() + "\n")
    return salt


def pseudonymize(salt: bytes, value: str) -> str:
    """Keyed hash of an identifier: stable for one salt, not reversible without it."""
    return hmac.new(salt, value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


@dataclass
class _Processed:
    sha256: str
    pixels: np.ndarray | None
    meta: dict[str, Any]
    identifiers: dict[str, str]
    error: str | None = None


_WORKER: dict[str, Any] = {}


def _init_worker(size: int, max_pixels: int, reusable: frozenset[str]) -> None:
    """Per-process settings, sent once per worker rather than once per image."""
    _WORKER.update(size=size, max_pixels=max_pixels, reusable=reusable)


def _process(path: str) -> _Processed:
    """Worker: hash, decode and preprocess one file (skips decoding when the hash is reusable)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return _Processed("", None, {}, {}, f"{path}: cannot read file ({exc.strerror})")
    digest = hashlib.sha256(data).hexdigest()
    if digest in _WORKER["reusable"]:
        return _Processed(digest, None, {}, {})
    try:
        decoded = decode_image(data, name=path, max_pixels=_WORKER["max_pixels"])
        pixels = prepare_pixels(decoded.pixels, _WORKER["size"])
    except ImageDecodeError as exc:
        return _Processed(digest, None, {}, {}, str(exc))
    return _Processed(digest, pixels, decoded.meta, decoded.identifiers)


def _run_jobs(
    paths: list[str], settings: tuple[int, int, frozenset[str]], workers: int, on_done: Callable[[], None]
) -> Iterator[_Processed]:
    if workers <= 1 or len(paths) < IN_PROCESS_BELOW:
        _init_worker(*settings)
        for path in paths:
            yield _process(path)
            on_done()
        return
    # forkserver: safe even when the caller has already started threads (torch, pytest).
    context = mp.get_context("forkserver")
    chunk = max(1, min(16, len(paths) // (workers * 16)))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=settings
    ) as pool:
        for result in pool.map(_process, paths, chunksize=chunk):
            yield result
            on_done()


def _previous_pixels(out: Path, spec: PreprocessSpec) -> tuple[Dataset | None, dict[str, int]]:
    """The dataset already at ``out`` and its rows by file hash, when its preprocessing matches."""
    try:
        previous = Dataset.open(out)
    except RadflowError:
        return None, {}
    if previous.spec != spec:
        return None, {}
    return previous, {sha: i for i, sha in enumerate(previous.manifest["sha256"])}


def _identity(record: SourceRecord, processed: _Processed, salt: bytes) -> tuple[str, str]:
    patient = record.patient or processed.identifiers.get("patient_id") or f"file:{processed.sha256}"
    study = record.study or processed.identifiers.get("study_uid") or f"{patient}/file:{processed.sha256}"
    return pseudonymize(salt, patient), pseudonymize(salt, f"{patient}\x00{study}")


def _append_extra(table: SourceTable, fmt: str, folder: Path, options: IngestOptions) -> None:
    """Read ``folder`` in format ``fmt`` and add its records to ``table`` as training-only rows."""
    keeps_labels = fmt not in ("boneage", "folder")  # those formats fix their own labels
    extra = read_source(
        fmt,
        folder,
        uncertain=options.uncertain,
        labels=list(table.labels) if keeps_labels else None,
        frontal_only=options.frontal_only,
        labels_csv=options.labels_csv,
    )
    if extra.task != table.task or extra.labels != table.labels:
        raise DataError(
            f"extra source has task {extra.task} with labels {extra.labels}, but the main source has "
            f"{table.task} with {table.labels}; extra data must label the same findings.",
            path=folder,
        )
    for record in extra.records:
        # The folder name keeps these pseudo-patients apart from every patient of the main source.
        patient = f"{EXTRA_SPLIT}:{folder.name}:{record.patient or record.rel_path}"
        record.study = f"{patient}/{record.study or record.rel_path}"
        record.patient = patient
        record.official_split = EXTRA_SPLIT
    table.records.extend(extra.records)
    table.skipped.extend(extra.skipped)
    table.info.setdefault("extra", []).append({"path": str(folder.resolve()), "images": len(extra.records)})


def ingest(
    src: Path,
    fmt: str,
    out: Path,
    options: IngestOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Ingest ``src`` in format ``fmt`` into dataset directory ``out``; returns dataset.json's content.

    ``progress(done, total)`` is called as images complete.
    """
    options = options or IngestOptions()
    src, out = Path(src), Path(out)
    spec = PreprocessSpec(size=options.size)
    table = read_source(
        fmt,
        src,
        uncertain=options.uncertain,
        labels=options.labels,
        frontal_only=options.frontal_only,
        labels_csv=options.labels_csv,
    )
    for folder in options.extra:
        _append_extra(table, fmt, Path(folder), options)
    skipped = list(table.skipped)
    if options.strict and skipped:
        first = skipped[0]
        raise DataError(f"{first['error']} (--strict; {len(skipped)} problem(s) in all)", first["path"], first["row"])
    if not table.records:
        raise DataError(
            f"no images to ingest from {src} as {fmt}"
            + (f" ({len(skipped)} rows skipped; first: {skipped[0]['error']})" if skipped else ""),
            path=src,
        )
    out.mkdir(parents=True, exist_ok=True)
    salt = load_salt(options.salt_file or out.parent / SALT_FILE)
    previous, reusable_rows = _previous_pixels(out, spec)
    workers = options.workers or available_cores()
    paths = [str(r.path) for r in table.records]
    settings = (spec.size, options.max_pixels, frozenset(reusable_rows))
    total, done = len(paths), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    staging = f".{SHARD_DIR}-new"
    writer = ShardWriter(out, spec.size, subdir=staging)
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    reused = 0
    try:
        for record, processed in zip(table.records, _run_jobs(paths, settings, workers, tick), strict=True):
            if processed.error is not None:
                entry = {"path": record.rel_path, "row": record.row, "error": processed.error}
                if options.strict:
                    raise DataError(f"{processed.error} (--strict)", record.rel_path, record.row)
                skipped.append(entry)
                continue
            if processed.sha256 in seen:
                skipped.append(
                    {
                        "path": record.rel_path,
                        "row": record.row,
                        "error": f"duplicate of {seen[processed.sha256]}",
                    }
                )
                continue
            seen[processed.sha256] = record.rel_path
            pixels = processed.pixels
            if pixels is None:
                assert previous is not None
                pixels = previous.image(reusable_rows[processed.sha256])
                reused += 1
            shard, offset = writer.add(pixels)
            patient_id, study_id = _identity(record, processed, salt)
            meta = processed.meta
            age = record.age if not math.isnan(record.age) else meta.get("age")
            rows.append(
                {
                    "image_id": processed.sha256[:20],
                    "source_path": record.rel_path,
                    "sha256": processed.sha256,
                    "patient_id": patient_id,
                    "study_id": study_id,
                    "view": record.view or meta.get("view", "") or "",
                    "projection": record.projection or meta.get("projection", "") or "",
                    "sex": record.sex or meta.get("sex", "") or "",
                    "age": math.nan if age is None else float(age),
                    "split": "",
                    "official_split": record.official_split,
                    "shard": shard,
                    "offset": offset,
                    **record.labels,
                }
            )
        writer.close()
        if not rows:
            raise DataError(
                f"no image of {src} could be decoded ({len(skipped)} skipped; first: {skipped[0]['error']})",
                path=src,
            )
        manifest = pd.DataFrame(rows)
        for label in table.labels:
            if label not in manifest:
                manifest[label] = math.nan
        no_positive = [
            label for label in table.labels if table.task != "regression" and not (manifest[label] == 1).any()
        ]
        _swap_in(out)
        info = write_dataset(
            out,
            manifest,
            labels=table.labels,
            task=table.task,
            spec=spec,
            source={"format": fmt, "path": str(src.resolve()), **table.info},
            skipped=skipped,
            extra={
                "ingest": {"reused_images": reused, "decoded_images": len(rows) - reused, "workers": workers},
                "warnings": [f"label {label!r} has no positive image" for label in no_positive],
            },
        )
    finally:
        shutil.rmtree(out / staging, ignore_errors=True)
    return info


def _swap_in(out: Path) -> None:
    """Replace the dataset's shards with the freshly written ones."""
    current, new, old = out / SHARD_DIR, out / f".{SHARD_DIR}-new", out / f".{SHARD_DIR}-old"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)
    new.rename(current)
    shutil.rmtree(old, ignore_errors=True)
