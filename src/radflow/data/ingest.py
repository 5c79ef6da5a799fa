"""Ingest: a source (label table + images) to a versioned, de-identified, preprocessed dataset.

Stages: read the source table (no pixels) -> hash, decode and preprocess every image on all
cores -> write pixel shards and the manifest. Properties users rely on:

* De-identification: patient and study identifiers are replaced by an HMAC-SHA256 keyed with
  a per-workspace salt kept OUTSIDE the dataset (``.radflow-salt`` beside it by default), so
  the dataset can be shared without making the hashes reversible by guessing IDs. No name,
  birth date or other header text is ever copied: only whitelisted attributes (sex, age,
  view) reach the manifest.
* No source paths: folder and file names are PHI as often as tags are (CheXpert's hold the
  patient number, a hospital export's the patient's name). The manifest's ``source_key`` and
  every skipped-file entry carry a keyed hash of the path instead, and the map from key back
  to path is appended to the salt file, the one private file (:func:`source_paths` reads it).
* Reuse: images whose file hash and preprocessing match the existing dataset are copied
  from its shards instead of being decoded again.
* Safety: new shards and manifest are written beside the old ones and swapped in at the
  end; a failed or interrupted ingest leaves the previous dataset intact.
* Bad files are skipped and listed in ``dataset.json`` by source key, label table and row
  (``strict=True`` makes them fatal, with the path in the error). Only files inside the source
  folder are read (:mod:`radflow.data.sources.paths`): missing, linked-out and climbing paths
  are skipped and listed the same way, never looked for elsewhere.
* Masks (task ``segmentation``, formats ``siim`` and ``masks``): each record names its mask
  (:class:`radflow.data.maskfiles.MaskSpec`); the worker reads it at the image's original size, packs
  it (bit k = structure k) and puts it through :func:`radflow.data.masks.prepare_mask`, the image's
  own geometry, into mask shards beside the pixel shards (same shard and offset). A structure's label
  is 1 when the stored mask shows it, 0 when not, NaN when the image's annotation does not cover it.
* Boxes (task ``detection``, formats ``rsna-boxes``, ``vinbig``, ``nih-boxes``, ``coco-boxes``,
  ``label-studio``): each
  record carries its boxes in original pixels; once the worker has the image's size, each box is checked
  (inside the image, positive area) and mapped by :func:`radflow.data.boxes.to_training`, the image's own
  geometry, into ``boxes.parquet``; multi-reader sources add the fused training set
  (:func:`radflow.data.boxes.fuse_boxes`). A bad box skips its image, naming the box's row.
  Masks are read again on every ingest (they are cheap; pixels of unchanged files are reused), so an
  edited mask is never masked by a stale copy; a bad mask skips its image like a bad image does.
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
import io
import json
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

from radflow.data.boxes import box_frame, box_rows
from radflow.data.dataset import SHARD_DIR, Dataset, ShardWriter, write_dataset
from radflow.data.decode import DEFAULT_MAX_PIXELS, decode_image, sniff_format
from radflow.data.maskfiles import MaskSpec, load_mask
from radflow.data.masks import MASK_DIR, pack, prepare_mask
from radflow.data.preprocess import PreprocessSpec, prepare_pixels, training_spacing
from radflow.data.sources import SourceRecord, SourceTable, read_source
from radflow.data.split import EXTRA_SPLIT
from radflow.errors import ConfigError, DataError, ImageDecodeError, RadflowError
from radflow.hardware import available_cores

__all__ = ["IngestOptions", "ingest", "load_salt", "pseudonymize", "source_key", "source_paths"]

SALT_FILE = ".radflow-salt"
PATH_MAP_HEADER = "# radflow source paths, one JSON [source_key, source folder, path] a line; keep this file private"
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
    """The workspace's pseudonymisation key (the salt file's first line), created on first use and stable afterwards."""
    if path.is_file():
        with path.open() as fh:
            first = fh.readline().strip()
        try:
            salt = bytes.fromhex(first)
        except ValueError:
            raise DataError("salt file's first line is not hex digits; restore it from a backup", path) from None
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


def source_key(salt: bytes, rel_path: str, scope: str = "") -> str:
    """The manifest's stand-in for a source path: a keyed hash of the path relative to its source.

    ``scope`` keeps an extra source's paths apart from the main source's (``extra:<folder>``).
    Relative, so moving or copying a source keeps its keys, and the dataset version, unchanged.
    """
    return pseudonymize(salt, f"path\x00{scope}\x00{rel_path}")


def _read_path_map(salt_file: Path) -> dict[str, tuple[str, str]]:
    if not salt_file.is_file():
        return {}
    found: dict[str, tuple[str, str]] = {}
    with salt_file.open() as fh:
        fh.readline()  # the salt
        for line in fh:
            if not line.startswith("["):
                continue
            try:
                key, folder, rel = json.loads(line)
            except (ValueError, TypeError):
                continue  # a line cut short by a crash mid-append; the next ingest writes it again
            found[str(key)] = (str(folder), str(rel))
    return found


def source_paths(salt_file: Path) -> dict[str, Path]:
    """Each ``source_key`` written with this salt -> the source file it stands for (latest ingest wins).

    Read from the salt file, never from the dataset; for a skipped row the path is the one its
    label table gave, which need not exist.
    """
    return {key: Path(folder) / rel for key, (folder, rel) in _read_path_map(Path(salt_file)).items()}


def _record_paths(salt_file: Path, entries: dict[str, tuple[str, str]]) -> None:
    """Append the keys not yet mapped (or mapped elsewhere) to the salt file; the salt line is never rewritten."""
    known = _read_path_map(salt_file)
    new = {key: value for key, value in entries.items() if known.get(key) != value}
    if not new:
        return
    lines = [] if known else [PATH_MAP_HEADER]
    lines += [json.dumps([key, folder, rel]) for key, (folder, rel) in new.items()]
    with salt_file.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        ends_line = fh.tell() == 0 or (fh.seek(-1, os.SEEK_END) >= 0 and fh.read(1) == b"\n")
    with salt_file.open("a") as fh:
        fh.write(("" if ends_line else "\n") + "\n".join(lines) + "\n")


@dataclass
class _Processed:
    sha256: str
    pixels: np.ndarray | None
    meta: dict[str, Any]
    identifiers: dict[str, str]
    error: str | None = None
    mask: np.ndarray | None = None
    """Segmentation: the packed mask at training size."""
    presence: dict[str, float] | None = None
    """Segmentation: each structure's label (1 shown, 0 not, NaN not annotated)."""
    shape: tuple[int, int] | None = None
    """The image's original (height, width), which its boxes are checked against and mapped from."""


_WORKER: dict[str, Any] = {}


def _init_worker(size: int, max_pixels: int, reusable: frozenset[str]) -> None:
    """Per-process settings, sent once per worker rather than once per image."""
    _WORKER.update(size=size, max_pixels=max_pixels, reusable=reusable)


def _reused(digest: str, data: bytes, name: str) -> tuple[_Processed, tuple[int, int]]:
    """A file whose pixels are reused: what its header says (size; DICOM attributes and identifiers), no decoding.

    The DICOM header is read again because identity and the whitelisted attributes come from it, not
    from the stored pixels: without them a re-ingest would make every image its own patient.
    """
    if sniff_format(data) == "dicom":
        import pydicom

        # the decoder's own attribute readers, so a reused image gets exactly what decoding gave it
        from radflow.data.dicom import header_attributes, header_identifiers

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            photometric = str(ds.PhotometricInterpretation).strip().upper()
            processed = _Processed(digest, None, header_attributes(ds, photometric), header_identifiers(ds))
            return processed, (int(ds.Rows), int(ds.Columns))
        except Exception as exc:  # it decoded last time: a header that fails now is a changed pydicom
            raise ImageDecodeError(f"cannot read the DICOM header again ({type(exc).__name__})", path=name) from None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return _Processed(digest, None, {}, {}), (img.size[1], img.size[0])
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot read the image's size ({exc})", path=name) from None


def _prepared_mask(spec: MaskSpec, height: int, width: int, size: int) -> tuple[np.ndarray, dict[str, float]]:
    """The image's packed mask at training size and each structure's label (see the module docstring)."""
    bits = prepare_mask(pack(load_mask(spec, height, width)), size)
    presence = {}
    for k, (name, annotated) in enumerate(zip(spec.outputs, spec.annotated_outputs(), strict=True)):
        presence[name] = float(bool((bits >> bits.dtype.type(k) & 1).any())) if annotated else math.nan
    return bits, presence


def _process(job: tuple[str, str, MaskSpec | None]) -> _Processed:
    """Worker: hash, decode and preprocess one file (skips decoding when the hash is reusable), and its mask.

    ``job`` is (path, source key, mask); errors name the key, never the path, since they go into dataset.json.
    """
    path, key, spec = job
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return _Processed("", None, {}, {}, f"cannot read file ({exc.strerror})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        if digest in _WORKER["reusable"]:
            processed, (height, width) = _reused(digest, data, key)
        else:
            decoded = decode_image(data, name=key, max_pixels=_WORKER["max_pixels"])
            pixels = prepare_pixels(decoded.pixels, _WORKER["size"])
            processed = _Processed(digest, pixels, decoded.meta, decoded.identifiers)
            height, width = decoded.pixels.shape
        processed.shape = (int(height), int(width))
    except ImageDecodeError as exc:
        message = str(exc)
        return _Processed(digest, None, {}, {}, message.removeprefix(f"{key}: "))
    if spec is not None:
        try:
            processed.mask, processed.presence = _prepared_mask(spec, height, width, _WORKER["size"])
        except DataError as exc:
            processed.error = f"mask: {exc}"
    return processed


def _run_jobs(
    jobs: list[tuple[str, str, MaskSpec | None]],
    settings: tuple[int, int, frozenset[str]],
    workers: int,
    on_done: Callable[[], None],
) -> Iterator[_Processed]:
    if workers <= 1 or len(jobs) < IN_PROCESS_BELOW:
        _init_worker(*settings)
        for job in jobs:
            yield _process(job)
            on_done()
        return
    # forkserver: safe even when the caller has already started threads (torch, pytest).
    context = mp.get_context("forkserver")
    chunk = max(1, min(16, len(jobs) // (workers * 16)))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=settings
    ) as pool:
        for result in pool.map(_process, jobs, chunksize=chunk):
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


@dataclass(frozen=True)
class _Origin:
    """Which source a record or skipped row came from: its folder, and the scope of its keys."""

    root: Path
    scope: str = ""


def _read_extra(table: SourceTable, fmt: str, folder: Path, options: IngestOptions) -> SourceTable:
    """Read ``folder`` in format ``fmt`` as training-only rows for ``table`` (see the module docstring)."""
    keeps_labels = fmt not in ("boneage", "folder")  # those formats fix their own labels
    mismatch = f"the main source has {table.task} with {table.labels}; extra data must label the same findings."
    try:
        extra = read_source(
            fmt,
            folder,
            uncertain=options.uncertain,
            labels=list(table.labels) if keeps_labels else None,
            frontal_only=options.frontal_only,
            labels_csv=options.labels_csv,
        )
    except ConfigError as exc:  # the main source's labels, asked of a folder that lacks one
        raise DataError(f"extra source: {exc} But {mismatch}", path=folder) from None
    if extra.task != table.task or extra.labels != table.labels:
        raise DataError(f"extra source has task {extra.task} with labels {extra.labels}, but {mismatch}", path=folder)
    for record in extra.records:
        # The folder name keeps these pseudo-patients apart from every patient of the main source.
        patient = f"{EXTRA_SPLIT}:{folder.name}:{record.patient or record.rel_path}"
        record.study = f"{patient}/{record.study or record.rel_path}"
        record.patient = patient
        record.official_split = EXTRA_SPLIT
    table.info.setdefault("extra", []).append({"path": str(folder.resolve()), "images": len(extra.records)})
    return extra


class _Keys:
    """Source keys for one ingest, and the key -> path map they add to the salt file."""

    def __init__(self, salt: bytes):
        self.salt = salt
        self.paths: dict[str, tuple[str, str]] = {}
        self._folders: dict[Path, str] = {}

    def key(self, rel_path: str, origin: _Origin) -> str:
        key = source_key(self.salt, rel_path, origin.scope)
        folder = self._folders.get(origin.root)
        if folder is None:
            folder = self._folders[origin.root] = str(origin.root.resolve())
        self.paths[key] = (folder, rel_path)
        return key

    def skip(self, entry: dict[str, Any], origin: _Origin) -> dict[str, Any]:
        """A reader's skip entry as written to dataset.json: the path replaced by its key."""
        path = entry.get("path")
        return {
            "source_key": self.key(path, origin) if path else None,
            "source": origin.scope or "main",
            "table": entry.get("table"),
            "row": entry.get("row"),
            "error": entry["error"],
        }


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
    main = _Origin(table.root)
    records = [(record, main) for record in table.records]
    raw_skipped = [(entry, main) for entry in table.skipped]
    for folder in options.extra:
        extra = _read_extra(table, fmt, Path(folder), options)
        origin = _Origin(extra.root, f"{EXTRA_SPLIT}:{Path(folder).name}")
        records += [(record, origin) for record in extra.records]
        raw_skipped += [(entry, origin) for entry in extra.skipped]
    if options.strict and raw_skipped:
        first = raw_skipped[0][0]
        path = f"path {first['path']!r}; " if first["path"] else ""
        raise DataError(
            f"{first['error']} ({path}--strict; {len(raw_skipped)} problem(s) in all)",
            first["table"] or first["path"],
            first["row"],
        )
    if not records:
        raise DataError(
            f"no images to ingest from {src} as {fmt}"
            + (f" ({len(raw_skipped)} rows skipped; first: {raw_skipped[0][0]['error']})" if raw_skipped else ""),
            path=src,
        )
    out.mkdir(parents=True, exist_ok=True)
    salt_file = options.salt_file or out.parent / SALT_FILE
    if Path(salt_file).resolve().is_relative_to(out.resolve()):
        raise ConfigError(
            f"--salt-file {salt_file} is inside the dataset {out}; the key and its path map must stay outside "
            "what is shared (default: .radflow-salt beside the dataset)."
        )
    keys = _Keys(load_salt(salt_file))
    skipped = [keys.skip(entry, origin) for entry, origin in raw_skipped]
    previous, reusable_rows = _previous_pixels(out, spec)
    workers = options.workers or available_cores()
    jobs = [(str(record.path), keys.key(record.rel_path, origin), record.mask) for record, origin in records]
    settings = (spec.size, options.max_pixels, frozenset(reusable_rows))
    total, done = len(jobs), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    staging = f".{SHARD_DIR}-new"
    writer = ShardWriter(out, spec.size, subdir=staging)
    segmentation = table.task == "segmentation"
    mask_staging = f".{MASK_DIR}-new"
    mask_writer = (
        ShardWriter.for_masks(out, spec.size, len(table.labels), subdir=mask_staging) if segmentation else None
    )
    rows: list[dict[str, Any]] = []
    boxes: list[dict[str, object]] = []
    detection = table.task == "detection"
    fuse = bool(table.info.get("multi_reader"))
    seen: dict[str, str] = {}
    reused = 0
    upsampled: list[int] = []
    try:
        for (record, origin), (_, key, _mask), processed in zip(
            records, jobs, _run_jobs(jobs, settings, workers, tick), strict=True
        ):
            where = {"source_key": key, "source": origin.scope or "main", "table": record.table, "row": record.row}
            if processed.error is not None:
                if options.strict:
                    raise DataError(f"{processed.error} (--strict)", record.rel_path, record.row)
                skipped.append({**where, "error": processed.error})
                continue
            if processed.sha256 in seen:
                skipped.append({**where, "error": f"duplicate of source_key {seen[processed.sha256]}"})
                continue
            if record.boxes is not None:
                assert processed.shape is not None
                try:
                    image_id, readers = processed.sha256[:20], len(record.readers) or None
                    image_boxes = box_rows(image_id, record.boxes, *processed.shape, spec.size, fuse, readers)
                except DataError as exc:
                    if options.strict:
                        raise DataError(f"{exc} (image {record.rel_path}; --strict)", record.table, exc.row) from None
                    skipped.append({**where, "row": exc.row, "error": str(exc)})
                    continue
                boxes += image_boxes
            seen[processed.sha256] = key
            if processed.shape is not None and max(processed.shape) < spec.size:
                upsampled.append(max(processed.shape))
            pixels = processed.pixels
            if pixels is None:
                assert previous is not None
                pixels = previous.image(reusable_rows[processed.sha256])
                reused += 1
            shard, offset = writer.add(pixels)
            if mask_writer is not None:
                assert processed.mask is not None
                mask_writer.add(processed.mask)
            patient_id, study_id = _identity(record, processed, keys.salt)
            meta = processed.meta
            spacing = meta.get("spacing")
            if spacing is not None and processed.shape is not None:
                spacing = training_spacing(spacing, *processed.shape, spec.size)
            age = record.age if not math.isnan(record.age) else meta.get("age")
            rows.append(
                {
                    "image_id": processed.sha256[:20],
                    "source_key": key,
                    "sha256": processed.sha256,
                    "patient_id": patient_id,
                    "study_id": study_id,
                    "view": record.view or meta.get("view", "") or "",
                    "projection": record.projection or meta.get("projection", "") or "",
                    "sex": record.sex or meta.get("sex", "") or "",
                    "age": math.nan if age is None else float(age),
                    "spacing_row_mm": math.nan if spacing is None else spacing[0],
                    "spacing_col_mm": math.nan if spacing is None else spacing[1],
                    "split": "",
                    "official_split": record.official_split,
                    "shard": shard,
                    "offset": offset,
                    **record.labels,
                    **(processed.presence or {}),
                }
            )
        writer.close()
        if mask_writer is not None:
            mask_writer.close()
        # Before anything names a key: a key the salt file cannot map back is a row nobody can trace.
        _record_paths(salt_file, keys.paths)
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
        _swap_in(out, SHARD_DIR)
        if segmentation:
            _swap_in(out, MASK_DIR)
        else:
            shutil.rmtree(out / MASK_DIR, ignore_errors=True)  # a segmentation dataset's masks, now stale
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
                "warnings": [
                    *(f"label {label!r} has no positive image" for label in no_positive),
                    *_upsampled_warning(upsampled, spec.size),
                ],
                **({"boxes": {"fusion": table.info.get("fusion")}} if detection else {}),
            },
            boxes=box_frame(boxes) if detection else None,
        )
    finally:
        shutil.rmtree(out / staging, ignore_errors=True)
        shutil.rmtree(out / mask_staging, ignore_errors=True)
    return info


def _upsampled_warning(sides: list[int], size: int) -> list[str]:
    """Images whose padded square is smaller than the training size are enlarged, which adds no detail: say so."""
    if not sides:
        return []
    return [
        f"{len(sides)} image(s) are smaller than data.image_size ({size} px; the smallest is {min(sides)} px on "
        f"its longer side): they are upsampled to {size} x {size}; pass --size (data.image_size) to train at "
        "their own resolution"
    ]


def _swap_in(out: Path, subdir: str) -> None:
    """Replace the dataset's shards (pixel or mask) with the freshly written ones."""
    current, new, old = out / subdir, out / f".{subdir}-new", out / f".{subdir}-old"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)
    new.rename(current)
    shutil.rmtree(old, ignore_errors=True)
