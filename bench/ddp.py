"""Data-parallel training (``train.workers`` = 2, torch DDP over gloo) beside one process, same global batch.

Both sides run :func:`radflow.train.loop.train` on the same dataset (the tests' fixture generator,
on disk) with the same params: ``train.batch_size`` is the global batch, so the 2-worker run takes
half of it on each rank and steps with the same learning rate. Per epoch the table gives the train
time (the slowest rank's, from the logged ``train_images_per_s``) and the loss curve (train and
val loss); the wall time of each run includes spawning and joining the ranks and logging the model.
DataLoader workers are off on both sides (``train.num_workers`` 0) so the ranks own the cores: one
process uses all cores' threads, each rank its share. The ranks draw their own augmentations, so
the curves agree closely but not exactly. On a CPU machine the ratio says what gloo's all-reduce
costs against one process using the same cores; the speed-up of DDP comes with a core set (or a
GPU) per rank.

    .venv/bin/python bench/ddp.py [--n 1600] [--size 64] [--arch small_cnn] [--batch-size 32]
                                  [--epochs 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radflow.config import Params
from radflow.data.dataset import Dataset
from radflow.hardware import available_cores
from radflow.train.loop import TrainResult, train
from tests.fixtures import make_dataset

from _table import print_ratio, print_table


def _run(ds: Path, params: Params, root: Path, name: str) -> tuple[TrainResult, float]:
    started = time.perf_counter()
    result = train(ds, params, f"sqlite:///{root / 'mlflow.db'}", experiment=name, out_dir=root / name, progress=False)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch of both sides")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    base = {
        "train.arch": args.arch,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.num_workers": 0,
        "train.early_stopping_patience": 0,
        "train.device": "cpu",
        "train.lr": 1e-3,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = make_dataset(root / "ds", n=args.n, size=args.size)
        train_images = len(Dataset.open(ds).indices("train"))
        sides = {
            "1 process": Params().with_overrides({**base, "train.workers": 1}),
            f"DDP {args.workers} workers": Params().with_overrides({**base, "train.workers": args.workers}),
        }
        runs = {name: _run(ds, params, root, name.split()[0]) for name, params in sides.items()}
    print(
        f"{args.arch} at {args.size} px, global batch {args.batch_size}, {train_images} train images, "
        f"{available_cores()} cores, gloo on CPU"
    )
    rows, epoch_times = [], {}
    for name, (result, wall) in runs.items():
        times = [train_images / h["train_images_per_s"] for h in result.history]
        epoch_times[name] = sum(times[1:]) / max(len(times) - 1, 1)  # epoch 1 includes the warm-up
        for h, seconds in zip(result.history, times, strict=True):
            rows.append(
                [
                    name,
                    int(h["epoch"]),
                    seconds,
                    *(f"{h[k]:.4f}" for k in ("train_loss", "val_loss", "val_macro_auroc")),
                ]
            )
        rows.append([name, "run wall", wall, "", "", ""])
    print_table(["setup", "epoch", "train s", "train loss", "val loss", "val AUROC"], rows)
    single, ddp = runs["1 process"][0], runs[f"DDP {args.workers} workers"][0]
    print_ratio(
        f"DDP {args.workers} workers / 1 process time per epoch (epochs 2+)",
        epoch_times[f"DDP {args.workers} workers"] / epoch_times["1 process"],
    )
    print_ratio(
        f"DDP {args.workers} workers / 1 process final val loss",
        ddp.history[-1]["val_loss"] / single.history[-1]["val_loss"],
    )


if __name__ == "__main__":
    main()
