"""The on-disk dataset: ``manifest.parquet`` + pixel shards + ``dataset.json``.

Layout of a dataset directory ``DS/``::

    manifest.parquet      one row per image (see MANIFEST_COLUMNS; then one float column per label)
    dataset.json          version, task, labels, preprocessing, counts, prevalence, skipped files (by key)
    shards/pixels-00000.npy   uint8 arrays (n, size, size), memory-mapped by readers
    masks/masks-00000.npy     segmentation only: packed masks (n, size, size), same shard/offset as
                              the image (bit k = structure k; see radflow.data.masks)
    boxes.parquet             detection only: one row per box at training size (image_id, label,
                              reader, x0, y0, x1, y1, score; see radflow.data.boxes)

Pixels live in a few large ``.npy`` files rather than one file per image, because DVC and file
systems are slow with many small files and ``np.load(mmap_mode="r")`` gives zero-copy reads to
DataLoader workers. Label columns are floats: 1 positive, 0 negative, NaN = ignore (unknown or
uncertain under the U-Ignore policy); for regression the single label column is the target; for
segmentation the labels are the structures and a label column says whether the image shows the
structure at all (1 present, 0 absent, NaN not annotated), which stratifies the split; for
detection the labels are the box labels and a label column says whether the image's training
boxes hold one of that label (1) or not (0), which stratifies the split the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from radflow.data.boxes import BOX_COLUMNS, BOX_FILE, FUSED_READER
from radflow.data.masks import MASK_DIR, mask_dtype
from radflow.data.preprocess import PreprocessSpec
from radflow.errors import DataError, NotFoundError, did_you_mean

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_COLUMNS",
    "SHARD_DIR",
    "SPACING_COLUMNS",
    "SPLITS",
    "Dataset",
    "ShardWriter",
    "Task",
    "compute_version",
    "write_dataset",
]

FORMAT_VERSION = 2
"""2: ``source_key`` (a keyed hash of the source path) replaced ``source_path``, which could hold PHI."""
Task = Literal["multilabel", "multiclass", "regression", "segmentation", "detection"]
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = [
    "image_id",  # sha256 of the source file, first 20 hex digits
    "source_key",  # keyed hash of the path relative to the source; the path itself is only in the salt file
    "sha256",  # sha256 of the source file bytes
    "patient_id",  # salted hash of the source's patient identifier
    "study_id",  # salted hash of patient + study
    "view",  # "frontal" / "lateral" / "" when unknown
    "projection",  # "AP" / "PA" / "LL" ... / "" when unknown
    "sex",  # "M" / "F" / "" when unknown
    "age",  # years, NaN when unknown
    "split",  # "train" / "val" / "test" / "" before `radflow split`
    "official_split",  # split fixed by the source (e.g. CheXpert valid.csv -> "test"), else ""
    "shard",  # index of the pixel shard
    "offset",  # row of the image inside its shard
    "spacing_row_mm",  # mm between pixel rows at training size (DICOM PixelSpacing, rescaled), NaN when unknown
    "spacing_col_mm",  # mm between pixel columns at training size, NaN when unknown
]
SPACING_COLUMNS = ("spacing_row_mm", "spacing_col_mm")
"""Optional in what callers pass and in datasets written before them: absent means unknown (NaN)."""
SHARD_DIR = "shards"
DEFAULT_SHARD_IMAGES = 4096


def _shard_name(index: int, prefix: str = "pixels") -> str:
    return f"{prefix}-{index:05d}.npy"


def _shard_path(root: Path, index: int) -> Path:
    return root / SHARD_DIR / _shard_name(index)


def _mask_path(root: Path, index: int) -> Path:
    return root / MASK_DIR / _shard_name(index, "masks")


class ShardWriter:
    """Appends ``(size, size)`` arrays to shard files of at most ``shard_images`` arrays each.

    Images are ``uint8`` in ``shards/pixels-*.npy``; :meth:`for_masks` makes the writer of a
    segmentation dataset's packed masks (``masks/masks-*.npy``), fed in step with the image writer
    so each mask has its image's shard and offset.
    """

    def __init__(
        self,
        root: Path,
        size: int,
        shard_images: int = DEFAULT_SHARD_IMAGES,
        subdir: str = SHARD_DIR,
        prefix: str = "pixels",
        dtype: np.dtype | type = np.uint8,
    ):
        self.dir = Path(root) / subdir
        self.size = size
        self.shard_images = shard_images
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        self._buffer: list[np.ndarray] = []
        self._shard = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(f"{prefix}-*.npy"):
            stale.unlink()

    @classmethod
    def for_masks(
        cls,
        root: Path,
        size: int,
        n_structures: int,
        shard_images: int = DEFAULT_SHARD_IMAGES,
        subdir: str = MASK_DIR,
    ) -> ShardWriter:
        """The mask shards' writer: packed masks with a bit per structure (:func:`radflow.data.masks.mask_dtype`).

        ``subdir`` lets ingest write beside the current masks and swap them in at the end.
        """
        return cls(root, size, shard_images, subdir=subdir, prefix="masks", dtype=mask_dtype(n_structures))

    def add(self, pixels: np.ndarray) -> tuple[int, int]:
        """Store one image (or packed mask); returns its (shard, offset)."""
        if pixels.shape != (self.size, self.size) or pixels.dtype != self.dtype:
            raise ValueError(
                f"shard arrays must be {self.dtype} ({self.size}, {self.size}), got {pixels.dtype} {pixels.shape}."
            )
        location = (self._shard, len(self._buffer))
        self._buffer.append(pixels)
        if len(self._buffer) >= self.shard_images:
            self._flush()
        return location

    def _flush(self) -> None:
        if not self._buffer:
            return
        final = self.dir / _shard_name(self._shard, self.prefix)
        tmp = final.with_suffix(".tmp.npy")
        np.save(tmp, np.stack(self._buffer))
        os.replace(tmp, final)
        self._buffer = []
        self._shard += 1

    def close(self) -> None:
        self._flush()


def compute_version(
    manifest: pd.DataFrame, spec: PreprocessSpec, labels: list[str], task: str, boxes: pd.DataFrame | None = None
) -> str:
    """Content version of a dataset: hash of the manifest rows (minus storage layout) + preprocessing (+ boxes)."""
    content = manifest.drop(columns=["shard", "offset"], errors="ignore").sort_values("image_id")
    digest = hashlib.sha256()
    digest.update(json.dumps({"spec": spec.to_dict(), "labels": labels, "task": task}, sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(content, index=False).to_numpy().tobytes())
    if boxes is not None:
        ordered = boxes[BOX_COLUMNS].sort_values(BOX_COLUMNS, kind="stable")
        digest.update(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _prevalence(manifest: pd.DataFrame, labels: list[str], task: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups: list[tuple[str, pd.DataFrame]] = [("all", manifest)]
    groups += [(s, manifest[manifest["split"] == s]) for s in SPLITS if (manifest["split"] == s).any()]
    for name, frame in groups:
        if task == "regression":
            target = frame[labels[0]]
            out[name] = {"n": len(frame), "mean": _num(target.mean()), "std": _num(target.std())}
        else:
            out[name] = {
                label: {"positive": int((frame[label] == 1).sum()), "known": int(frame[label].notna().sum())}
                for label in labels
            }
    return out


def _num(x: float) -> float | None:
    return None if pd.isna(x) else round(float(x), 4)


def _with_spacing(manifest: pd.DataFrame) -> pd.DataFrame:
    missing = {c: np.nan for c in SPACING_COLUMNS if c not in manifest.columns}
    return manifest.assign(**missing) if missing else manifest


def write_dataset(
    root: Path,
    manifest: pd.DataFrame,
    *,
    labels: list[str],
    task: Task,
    spec: PreprocessSpec,
    source: dict[str, Any],
    skipped: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    boxes: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write ``manifest.parquet`` and ``dataset.json`` (pixels are already in the shards), and for
    detection ``boxes.parquet`` (``boxes``; None keeps the dataset's current one, e.g. when splitting).

    Files are written to temporary names and renamed, so a crash never leaves a half-written
    manifest beside a good one.
    """
    root = Path(root)
    manifest = _with_spacing(manifest)
    missing = [c for c in [*MANIFEST_COLUMNS, *labels] if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    if task == "segmentation":
        # the labels are the structures; the masks are already in the mask shards
        extra = {**(extra or {}), "masks": {"encoding": "bits", "dtype": str(mask_dtype(len(labels)))}}
    manifest = manifest[[*MANIFEST_COLUMNS, *labels]].reset_index(drop=True)
    for label in labels:
        manifest[label] = manifest[label].astype("float32")
    if task == "detection":
        if boxes is None:
            boxes = pd.read_parquet(root / BOX_FILE)
        boxes = boxes[BOX_COLUMNS].reset_index(drop=True)
        extra = {**(extra or {}), "boxes": _box_summary(boxes, labels, extra or {})}
    version = compute_version(manifest, spec, labels, task, boxes)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "task": task,
        "labels": labels,
        "preprocess": spec.to_dict(),
        "source": source,
        "counts": {
            "images": len(manifest),
            "patients": int(manifest["patient_id"].nunique()),
            "studies": int(manifest["study_id"].nunique()),
            **{s: int((manifest["split"] == s).sum()) for s in SPLITS},
        },
        "prevalence": _prevalence(manifest, labels, task),
        "skipped": skipped or [],
        **(extra or {}),
    }
    if boxes is not None:
        tmp = root / f"{BOX_FILE}.tmp"
        boxes.to_parquet(tmp, index=False)
        os.replace(tmp, root / BOX_FILE)
    else:
        (root / BOX_FILE).unlink(missing_ok=True)  # a detection dataset's boxes, now stale
    tmp = root / "manifest.parquet.tmp"
    manifest.to_parquet(tmp, index=False)
    os.replace(tmp, root / "manifest.parquet")
    tmp = root / "dataset.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, root / "dataset.json")
    return info


def _box_summary(boxes: pd.DataFrame, labels: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """dataset.json's ``boxes``: the box labels, readers, fusion rule and box counts per label (training set)."""
    previous = extra.get("boxes", {})
    train = boxes[boxes["reader"] == FUSED_READER]
    return {
        "file": BOX_FILE,
        "labels": labels,
        "coordinates": "x0, y0, x1, y1 in training-size pixel edges",
        "readers": sorted(r for r in boxes["reader"].unique() if r != FUSED_READER),
        "fusion": previous.get("fusion"),
        "counts": {label: int((train["label"] == label).sum()) for label in labels},
    }


@dataclass
class Dataset:
    """A dataset directory opened for reading; pixels are memory-mapped, never copied whole."""

    root: Path
    manifest: pd.DataFrame
    info: dict[str, Any]
    _shards: list[np.ndarray] = field(default_factory=list, repr=False)
    _mask_shards: list[np.ndarray] = field(default_factory=list, repr=False)
    _location: np.ndarray | None = field(default=None, repr=False)
    _boxes: pd.DataFrame | None = field(default=None, repr=False)
    _box_groups: dict[str | None, tuple[dict[int, pd.DataFrame], pd.DataFrame]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        if not (root / "manifest.parquet").is_file() or not (root / "dataset.json").is_file():
            raise NotFoundError(
                f"{root} is not a radflow dataset (no manifest.parquet / dataset.json). "
                "Create one with `radflow ingest SRC --format ... --out DIR`."
            )
        info = json.loads((root / "dataset.json").read_text())
        if info.get("format_version") != FORMAT_VERSION:
            why = (
                " (its manifest keeps source paths verbatim, and paths can name patients: delete it)"
                if info.get("format_version") == 1
                else ""
            )
            raise DataError(
                f"dataset format {info.get('format_version')} is not supported (expected {FORMAT_VERSION}){why}; "
                "re-ingest the source.",
                path=root / "dataset.json",
            )
        manifest = _with_spacing(pd.read_parquet(root / "manifest.parquet"))
        return cls(root=root, manifest=manifest, info=info)

    @property
    def version(self) -> str:
        return str(self.info["version"])

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    @property
    def task(self) -> Task:
        task: Task = self.info["task"]
        return task

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.info["preprocess"])

    @property
    def is_split(self) -> bool:
        return bool((self.manifest["split"] != "").all())

    def shards(self) -> list[np.ndarray]:
        """The pixel shards as read-only memory maps (opened lazily, once per process)."""
        if not self._shards:
            n = int(self.manifest["shard"].max()) + 1 if len(self.manifest) else 0
            self._shards = [np.load(_shard_path(self.root, i), mmap_mode="r") for i in range(n)]
        return self._shards

    def _locations(self) -> np.ndarray:
        if self._location is None:
            self._location = self.manifest[["shard", "offset"]].to_numpy(dtype=np.int64)
        return self._location

    def image(self, row: int) -> np.ndarray:
        """Pixels (uint8, size x size) of manifest row ``row``."""
        shard, offset = self._locations()[row]
        return np.asarray(self.shards()[shard][offset])

    def images(self, rows: np.ndarray | list[int] | range) -> np.ndarray:
        """Pixels of several manifest rows, stacked (n, size, size)."""
        shards = self.shards()
        loc = self._locations()[np.asarray(rows, dtype=np.int64)]
        size = self.spec.size
        out = np.empty((len(loc), size, size), dtype=np.uint8)
        for i, (shard, offset) in enumerate(loc):
            out[i] = shards[shard][offset]
        return out

    @property
    def has_masks(self) -> bool:
        """Whether the dataset keeps a mask per image (task ``segmentation``)."""
        return "masks" in self.info

    @property
    def structures(self) -> list[str]:
        """The segmented structures, in bit order (a segmentation dataset's labels)."""
        if not self.has_masks:
            raise DataError(f"dataset {self.root} has no masks (task {self.task}).", path=self.root / "dataset.json")
        return self.labels

    def mask_shards(self) -> list[np.ndarray]:
        """The mask shards as read-only memory maps (opened lazily, once per process)."""
        if not self._mask_shards:
            self.structures  # noqa: B018 - raises for a dataset without masks
            n = int(self.manifest["shard"].max()) + 1 if len(self.manifest) else 0
            self._mask_shards = [np.load(_mask_path(self.root, i), mmap_mode="r") for i in range(n)]
        return self._mask_shards

    def masks(self, rows: np.ndarray | list[int] | range) -> np.ndarray:
        """Packed masks of several manifest rows (n, size, size); :func:`radflow.data.masks.unpack` splits them."""
        shards = self.mask_shards()
        loc = self._locations()[np.asarray(rows, dtype=np.int64)]
        size = self.spec.size
        out = np.empty((len(loc), size, size), dtype=shards[0].dtype if shards else np.uint8)
        for i, (shard, offset) in enumerate(loc):
            out[i] = shards[shard][offset]
        return out

    @property
    def has_boxes(self) -> bool:
        """Whether the dataset keeps boxes (task ``detection``, ``boxes.parquet``)."""
        return "boxes" in self.info

    def box_table(self) -> pd.DataFrame:
        """Every box of the dataset (``boxes.parquet``, read once per process), with its manifest ``row``."""
        if self._boxes is None:
            if not self.has_boxes:
                raise DataError(
                    f"dataset {self.root} has no boxes (task {self.task}).", path=self.root / "dataset.json"
                )
            frame = pd.read_parquet(self.root / BOX_FILE)
            rows = pd.Series(np.arange(len(self.manifest)), index=self.manifest["image_id"].to_numpy())
            frame.insert(0, "row", rows.reindex(frame["image_id"].to_numpy()).to_numpy())
            self._boxes = frame[frame["row"].notna()].astype({"row": "int64"}).reset_index(drop=True)
        return self._boxes

    def boxes(self, rows: np.ndarray | list[int] | range, reader: str | None = FUSED_READER) -> list[pd.DataFrame]:
        """Each manifest row's boxes (training size: ``label, reader, x0, y0, x1, y1, score``), in ``rows`` order.

        ``reader`` ``""`` is the training set (fused for multi-reader sources), a reader's id that reader's
        own boxes, ``None`` every set. A negative image gets an empty frame. Frames are cached per reader:
        treat them as read-only.
        """
        if reader not in self._box_groups:
            table = self.box_table()
            if reader is not None:
                table = table[table["reader"] == reader]
            frames = [g.reset_index(drop=True) for _, g in table.groupby("row", sort=False)]
            groups = {int(frame["row"].to_numpy()[0]): frame for frame in frames}
            self._box_groups[reader] = (groups, table.iloc[:0].reset_index(drop=True))
        groups, empty = self._box_groups[reader]
        return [groups.get(int(r), empty) for r in np.asarray(rows, dtype=np.int64)]

    def indices(self, split: str) -> np.ndarray:
        """Manifest row numbers of a split ("train", "val", "test" or "all")."""
        if split == "all":
            return np.arange(len(self.manifest))
        if split not in SPLITS:
            raise DataError(
                f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or 'all'.{did_you_mean(split, SPLITS)}"
            )
        if not self.is_split and split != "all":
            raise DataError(f"dataset {self.root} is not split yet; run `radflow split {self.root}` first.")
        return np.flatnonzero((self.manifest["split"] == split).to_numpy())

    def spacing(self, rows: np.ndarray | list[int] | range) -> np.ndarray | None:
        """(n, 2) mm per training-size pixel (row, column) of ``rows``, or None unless every one is known.

        Distances (HD95, surface distance) are then in mm; one image without a spacing makes them pixels
        for all, since a mix of units cannot be averaged.
        """
        values = self.manifest[list(SPACING_COLUMNS)].to_numpy(dtype=np.float64)[np.asarray(rows, dtype=np.int64)]
        return values if len(values) and bool(np.isfinite(values).all() and (values > 0).all()) else None

    def targets(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Label matrix float32 (n, n_labels); NaN = ignore."""
        frame = self.manifest[self.labels]
        values = frame.to_numpy(dtype=np.float32)
        return values if rows is None else values[np.asarray(rows, dtype=np.int64)]

    def iter_batches(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row indices, pixels) of a split in manifest order, ``batch_size`` at a time."""
        rows = self.indices(split)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield chunk, self.images(chunk)
