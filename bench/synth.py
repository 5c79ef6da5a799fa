"""Phantom chest generation throughput: all cores vs one worker, at the size the demo uses.

Goal: 2,000 chest images at 256 px in under 60 s on 2 cores (the synth step of ``radflow demo``).

    .venv/bin/python bench/synth.py [--n 2000] [--size 256] [--dicom-fraction 0.0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radflow.data.synth import synth_chest, synth_hand
from radflow.data.synth.common import available_cores

from _table import print_ratio, print_table


def _time(fn: object, *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dicom-fraction", type=float, default=0.0)
    args = parser.parse_args()
    cores = available_cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = [("chest", cores), ("chest", 1), ("hand", cores)]
        seconds = {}
        for kind, workers in runs:
            out = root / f"{kind}-{workers}" / "CheXpert-v1.0-phantom"
            if kind == "chest":
                s = _time(synth_chest, out, args.n, 0, args.size, args.dicom_fraction, workers=workers)
            else:
                s = _time(synth_hand, out, args.n, 0, args.size, workers=workers)
            seconds[(kind, workers)] = s
            rows.append([f"synth {kind}, {workers} worker(s)", args.n, s, args.n / s])
    print(f"{args.n} images at {args.size} px (DICOM share {args.dicom_fraction}), {cores} cores\n")
    print_table(["run", "images", "seconds", "images/s"], rows)
    print()
    print_ratio("chest all-cores speed-up over 1 worker", seconds[("chest", 1)] / seconds[("chest", cores)])
    print_ratio(
        f"chest seconds for {args.n} images on all cores", seconds[("chest", cores)], goal=60.0, higher_is_better=False
    )


if __name__ == "__main__":
    main()
