"""Training throughput with the real DataLoader (workers over memory-mapped shards) vs in-memory tensors.

Both sides train the same model with the same optimiser, augmentation and batch size, one step each
in turn (so both see the same load on a shared machine); the in-memory side indexes a preloaded,
already-normalised tensor, so the ratio is what reading the shards costs the training step.
Goal: ratio >= 0.9. The dataset is built in the on-disk format by the tests' fixture generator;
small_cnn at 128 px by default. ``--task segmentation`` measures the same for a segmentation set
(small_unet; the loader also reads and unpacks the mask shards, the in-memory side holds the masks
as float maps; image and mask augmented together, the kind's default loss).

    .venv/bin/python bench/train.py [--task both|multilabel|segmentation] [--n 2000] [--seg-n 600]
                                    [--size 128] [--arch small_cnn] [--workers 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radflow.config import AugmentConfig
from radflow.data.dataset import Dataset
from radflow.data.masks import unpack
from radflow.data.preprocess import to_model_input
from radflow.tasks import get_task
from radflow.train.data import ShardBatches, augment, make_loader
from radflow.train.models import create_model
from tests.fixtures import make_dataset

from _table import print_ratio, print_table

Batch = tuple[torch.Tensor, torch.Tensor]


def _in_memory(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[Batch]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(x) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def _from_loader(loader: torch.utils.data.DataLoader) -> Iterator[Batch]:
    for x, y, _ in loader:
        yield x, y


def _lockstep(
    feeds: dict[str, Iterator[Batch]],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dense: bool,
) -> dict[str, list[float]]:
    """Alternate one training step from each feed, timing fetch + step, so both share the same machine load."""
    generator = torch.Generator().manual_seed(0)
    cfg = AugmentConfig()
    totals = {name: [0.0, 0.0] for name in feeds}
    while True:
        for name, feed in feeds.items():
            start = time.perf_counter()
            batch = next(feed, None)
            if batch is None:
                return totals
            x, y = batch
            if dense:
                x, y = augment(x, cfg, generator, y)  # the masks move with their images
            else:
                x = augment(x, cfg, generator)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals[name][0] += len(x)
            totals[name][1] += time.perf_counter() - start


def measure(task: str, args: argparse.Namespace) -> None:
    """Both feeds for one task kind, side by side: a table and the ratio line."""
    dense = task == "segmentation"
    arch = args.arch or ("small_unet" if dense else "small_cnn")
    n = args.n if not dense else min(args.n, args.seg_n)
    kind = get_task(task)
    loss_fn = kind.make_loss(kind.losses[0])
    with tempfile.TemporaryDirectory() as tmp:
        labels = ("Left Lung", "Right Lung", "Heart") if dense else tuple("ABCDE")
        ds = Dataset.open(make_dataset(Path(tmp) / "ds", task=task, n=n, size=args.size, labels=labels))
        rows = ds.indices("train")
        targets = ds.targets(rows)
        x_mem = torch.from_numpy(to_model_input(ds.images(rows), ds.spec))
        if dense:
            maps = unpack(ds.masks(rows), len(ds.labels)).astype("float32")
            maps[np.isnan(targets)] = np.nan  # a structure not annotated on an image: NaN map, as the loader gives
            y_mem = torch.from_numpy(maps)
        else:
            y_mem = torch.from_numpy(targets)
        data = ShardBatches(ds, rows, ds.spec, targets, masks=dense)
        loader = make_loader(
            data,
            args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            generator=torch.Generator().manual_seed(0),
            drop_last=True,
        )
        torch.manual_seed(0)
        model = create_model(arch, len(ds.labels))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader_name = f"DataLoader ({args.workers} workers, mmap shards)"
        totals = {"in-memory tensors": [0.0, 0.0], loader_name: [0.0, 0.0]}
        for epoch in range(args.epochs + 1):
            feeds = {
                "in-memory tensors": _in_memory(x_mem, y_mem, args.batch_size, epoch),
                loader_name: _from_loader(loader),
            }
            measured = _lockstep(feeds, model, optimizer, loss_fn, dense)
            if epoch == 0:
                continue  # warm-up: worker start, allocator, first-touch of the shards
            for name, (seen, seconds) in measured.items():
                totals[name][0] += seen
                totals[name][1] += seconds
    rates = {name: seen / seconds for name, (seen, seconds) in totals.items()}
    shape = f"{task}: {arch} at {args.size} px, batch {args.batch_size}"
    print(f"{shape}, {len(rows)} train images, {os.cpu_count()} cores")
    print_table(
        ["feed", "images", "seconds", "images/s"],
        [[name, int(seen), float(seconds), rates[name]] for name, (seen, seconds) in totals.items()],
    )
    print_ratio(f"{task} loader / in-memory throughput", rates[loader_name] / rates["in-memory tensors"], goal=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seg-n", type=int, default=600, help="images of the segmentation set (its steps are slower)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--task", choices=["multilabel", "segmentation", "both"], default="both")
    parser.add_argument("--arch", default=None, help="default: small_cnn, or small_unet for segmentation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="timed passes per side, after one warm-up pass")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    for task in ("multilabel", "segmentation") if args.task == "both" else (args.task,):
        measure(task, args)


if __name__ == "__main__":
    main()
