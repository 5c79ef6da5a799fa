"""From a radflow dataset to training batches: memory-mapped shard reads, preprocessing, augmentation.

:class:`ShardBatches` is indexed by a *list* of rows and returns a whole batch, so a DataLoader
worker does one sorted read per shard and one vectorised normalisation per batch instead of
per-image Python work and a collate step. Workers receive only the dataset path and row/location
arrays; each opens the shards lazily as read-only memory maps, so no pixel array is ever pickled.
For a segmentation dataset the targets are the masks, read from the mask shards at the image's
shard and offset and unpacked to float maps ``(K, S, S)`` per image. Augmentation runs on the
batched tensor (on the GPU when training there) with its own seeded generator; masks move with
their image (the same affine and flip), intensity changes touch the image only. For a detection
dataset the targets are the rows' training boxes (:func:`box_targets`), ``(n, M, 5)`` per batch,
NaN rows padding images to the dataset's most boxes ``M``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from radflow.config import AugmentConfig
from radflow.data.dataset import SHARD_DIR, Dataset
from radflow.data.masks import MASK_DIR, unpack
from radflow.data.preprocess import PreprocessSpec, to_model_input

__all__ = ["Batch", "ShardBatches", "augment", "box_targets", "make_loader", "sex_feature"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def sex_feature(sex: Sequence[str] | np.ndarray) -> np.ndarray:
    """Sex as a model input: M = 1, F = 0, unknown = 0.5 (float32, shape (n, 1))."""
    values = np.asarray(sex, dtype=object)
    out = np.where(values == "M", 1.0, np.where(values == "F", 0.0, 0.5))
    return out.astype(np.float32).reshape(-1, 1)


def box_targets(ds: Dataset, rows: np.ndarray, labels: Sequence[str] | None = None) -> list[np.ndarray]:
    """Each row's training boxes ``(k, 5)`` float32: ``x0, y0, x1, y1`` at training size and the label's index.

    The index is into ``labels`` (a model's, default the dataset's); boxes of a label not in them are left out.
    """
    order = list(ds.labels if labels is None else labels)
    index = {label: float(j) for j, label in enumerate(order)}
    out = []
    for frame in ds.boxes(rows):
        frame = frame[frame["label"].isin(index)]
        corners = frame[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float32)
        indices = frame["label"].map(index).to_numpy(dtype=np.float32)[:, None]
        out.append(np.concatenate([corners, indices], axis=1))
    return out


class ShardBatches(torch.utils.data.Dataset[Batch]):
    """Batches (images, targets, extra) of chosen manifest rows, read from the shards on demand.

    With ``masks`` the targets of a batch are the rows' masks as float maps ``(n, K, S, S)``
    (K = the columns of ``targets``, the structures); the map of a structure whose ``targets``
    cell is NaN (not annotated on that image) is NaN throughout, which the losses and metrics skip.
    With ``boxes`` (one ``(k, 5)`` array per row, :func:`box_targets`) the targets of a batch are
    the boxes ``(n, M, 5)``, NaN rows padding to the most boxes of any row (at least one).
    """

    def __init__(
        self,
        ds: Dataset,
        rows: np.ndarray,
        spec: PreprocessSpec,
        targets: np.ndarray | None = None,
        extra: np.ndarray | None = None,
        masks: bool = False,
        boxes: Sequence[np.ndarray] | None = None,
    ):
        self.root = Path(ds.root)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.locations = ds.manifest[["shard", "offset"]].to_numpy(dtype=np.int64)[self.rows]
        self.spec = spec
        n = len(self.rows)
        self.targets = np.zeros((n, 0), np.float32) if targets is None else np.asarray(targets, np.float32)
        self.extra = np.zeros((n, 0), np.float32) if extra is None else np.asarray(extra, np.float32)
        self.masks = masks
        if masks:
            ds.structures  # noqa: B018 - a dataset without masks is refused here, not in a worker
            if self.targets.shape[1] != len(ds.structures):
                raise ValueError(f"masks need one target column per structure, got {self.targets.shape[1]}.")
        self.boxes = None
        if boxes is not None:
            if len(boxes) != n:
                raise ValueError(f"boxes need one array per row, got {len(boxes)} for {n} rows.")
            width = max([1, *(len(b) for b in boxes)])
            self.boxes = np.full((n, width, 5), np.nan, dtype=np.float32)
            for i, b in enumerate(boxes):
                self.boxes[i, : len(b)] = b
        self._shards: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        # Workers reopen the memory maps themselves; never ship mapped pages through pickle.
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state

    def _shard(self, index: int, kind: str = "pixels") -> np.ndarray:
        if (kind, index) not in self._shards:
            folder = MASK_DIR if kind == "masks" else SHARD_DIR
            self._shards[kind, index] = np.load(self.root / folder / f"{kind}-{index:05d}.npy", mmap_mode="r")
        return self._shards[kind, index]

    def read(self, positions: np.ndarray, kind: str = "pixels") -> np.ndarray:
        """uint8 pixels (n, size, size) of the given positions (indices into ``rows``); ``masks``: packed masks."""
        loc = self.locations[positions]
        out: np.ndarray | None = None
        for shard in np.unique(loc[:, 0]):
            mapped = self._shard(int(shard), kind)
            if out is None:
                out = np.empty((len(loc), self.spec.size, self.spec.size), dtype=mapped.dtype)
            where = np.flatnonzero(loc[:, 0] == shard)
            offsets = loc[where, 1]
            order = np.argsort(offsets, kind="stable")
            # Sorted offsets turn random access into a forward sweep over the mapped file.
            out[where[order]] = mapped[offsets[order]]
        if out is None:
            return np.empty((0, self.spec.size, self.spec.size), dtype=np.uint8)
        return out

    def read_masks(self, positions: np.ndarray) -> np.ndarray:
        """Float maps (n, K, size, size) of the positions' masks; NaN maps for structures not annotated."""
        targets = self.targets[positions]
        maps = unpack(self.read(positions, "masks"), targets.shape[1]).astype(np.float32)
        maps[np.isnan(targets)] = np.nan
        return maps

    def __getitem__(self, positions: Sequence[int] | int) -> Batch:
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        x = torch.from_numpy(to_model_input(self.read(pos), self.spec))
        y = self.targets[pos]
        if self.boxes is not None:
            y = self.boxes[pos]
        elif self.masks:
            y = self.read_masks(pos)
        return x, torch.from_numpy(y), torch.from_numpy(self.extra[pos])


def _worker_init(worker_id: int) -> None:
    # Workers only copy and normalise; one thread each leaves the cores to the training step.
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        np.random.seed((info.seed + worker_id) % 2**32)


def make_loader(
    data: ShardBatches,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    positions: Sampler[int] | None = None,
) -> DataLoader[Batch]:
    """A DataLoader yielding whole batches from ``data`` (its own sampler; no collate step).

    ``positions`` replaces the sampler of positions that is batched (a data-parallel rank's share).
    """
    base = positions
    if base is None:
        base = RandomSampler(range(len(data)), generator=generator) if shuffle else SequentialSampler(range(len(data)))
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    return DataLoader(
        data,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **kwargs,
    )


@overload
def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor: ...


@overload
def augment(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def augment(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, *, boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]: ...


def augment(
    x: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
    *,
    boxes: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Random rotation/scale (one affine resample), brightness, contrast and optional flip of a batch.

    Random numbers come from ``generator`` (CPU) so runs repeat exactly whatever the device. With
    ``masks`` (``(N, K, S, S)``) returns ``(x, masks)``: each mask goes through its image's affine
    and flip, resampled nearest-neighbour so its values stay 0/1 (and NaN maps stay NaN); brightness
    and contrast change the image only. With ``boxes`` (``(N, M, 5)``, NaN-padded rows of
    ``x0, y0, x1, y1, label`` in pixels) returns ``(x, boxes)``: each box's corners go through the
    inverse of its image's affine, the box becomes their bounding box clipped to the image, and a box
    left with under half its area inside the image (or under a pixel wide) becomes a NaN row. The
    random draws are the same with or without masks or boxes.
    """
    paired = masks if masks is not None else boxes
    if not cfg.enabled:
        return x if paired is None else (x, paired)
    n = x.shape[0]

    def uniform(span: float) -> torch.Tensor:
        return ((torch.rand(n, generator=generator) * 2 - 1) * span).to(x.device)

    if cfg.rotation_deg or cfg.scale or cfg.hflip:
        angle = uniform(math.radians(cfg.rotation_deg))
        scale = 1 + uniform(cfg.scale)
        flip = torch.ones(n, device=x.device)
        if cfg.hflip:
            flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(x.device)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, torch.zeros_like(cos)], 1),
                torch.stack([sin * flip, cos, torch.zeros_like(cos)], 1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if masks is not None:
            # The image's border padding, so a structure cut by the edge stays cut where the image is.
            masks = F.grid_sample(
                masks, grid.to(masks.dtype), mode="nearest", padding_mode="border", align_corners=False
            )
        if boxes is not None:
            boxes = _moved_boxes(boxes, theta[:, :, :2], x.shape[-2], x.shape[-1])
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + uniform(cfg.contrast)).view(n, 1, 1, 1) + mean
    if cfg.brightness:
        x = x + uniform(cfg.brightness).view(n, 1, 1, 1)
    if masks is not None:
        return x, masks
    return x if boxes is None else (x, boxes)


def _moved_boxes(boxes: torch.Tensor, a: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``boxes`` ``(N, M, 5)`` in pixels where the affine sampling grid ``output -> input = a @ output``
    (normalised coordinates, ``align_corners=False``) puts them: corners through ``a``'s inverse."""
    out = boxes.clone()
    corners = boxes[..., [0, 1, 2, 1, 2, 3, 0, 3]].reshape(*boxes.shape[:2], 4, 2)  # (N, M, 4, xy)
    size = torch.tensor([width, height], dtype=boxes.dtype, device=boxes.device)
    normalised = corners * (2 / size) - 1
    moved = torch.einsum("nij,nmkj->nmki", torch.linalg.inv(a.to(boxes.dtype)), normalised)
    pixels = (moved + 1) * (size / 2)
    low, high = pixels.amin(dim=2), pixels.amax(dim=2)  # (N, M, 2): the moved corners' bounding box
    area = (high - low).prod(dim=-1)
    low, high = torch.maximum(low, torch.zeros_like(low)), torch.minimum(high, size.expand_as(high))
    kept = (high - low).clamp(min=0)
    lost = (kept.prod(dim=-1) < 0.5 * area) | (kept.amin(dim=-1) < 1)
    out[..., 0:2], out[..., 2:4] = low, high
    out[lost] = float("nan")
    return out
