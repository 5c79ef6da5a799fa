"""Ingest throughput vs the raw decode + resize throughput of the same files, on all cores.

The raw figure is the floor cost of the work (read, decode, pad, resample) with nothing else;
ingest adds hashing, de-identification, shard writing and the manifest. Goal: ratio >= 0.85.

    .venv/bin/python bench/ingest.py [--n 1000] [--size 256] [--source-size 512]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radflow.data.decode import decode_file
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.preprocess import prepare_pixels
from radflow.data.synth import synth_chest

from _table import print_ratio, print_table


def _raw(args: tuple[str, int]) -> int:
    path, size = args
    return int(prepare_pixels(decode_file(path).pixels, size).sum() & 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256, help="training size (ingest output)")
    parser.add_argument("--source-size", type=int, default=512, help="size of the source images")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "CheXpert-v1.0-synth"
        synth_chest(src, n=args.n, seed=0, size=args.source_size, dicom_fraction=0.1)
        files = sorted(str(p) for p in src.rglob("*") if p.suffix in (".png", ".dcm"))
        # warm the page cache so both measurements read from memory
        for f in files:
            Path(f).read_bytes()
        context = mp.get_context("forkserver")
        start = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_raw, [(f, args.size) for f in files], chunksize=max(1, len(files) // (workers * 8))))
        raw_s = time.perf_counter() - start

        out = Path(tmp) / "ds"
        start = time.perf_counter()
        info = ingest(src, "chexpert", out, IngestOptions(size=args.size, workers=workers))
        ingest_s = time.perf_counter() - start
        start = time.perf_counter()
        again = ingest(src, "chexpert", out, IngestOptions(size=args.size, workers=workers))
        reingest_s = time.perf_counter() - start
        shutil.rmtree(out)
    n = info["counts"]["images"]
    assert again["ingest"]["reused_images"] == n
    print(f"{len(files)} files ({args.source_size} px source, 10% DICOM) -> {args.size} px, {workers} workers\n")
    print_table(
        ["path", "images", "seconds", "images/s"],
        [
            ["raw decode+resize (all cores)", len(files), raw_s, len(files) / raw_s],
            ["radflow ingest", n, ingest_s, n / ingest_s],
            ["radflow re-ingest (unchanged)", n, reingest_s, n / reingest_s],
        ],
    )
    print()
    print_ratio("ingest / raw decode+resize", (n / ingest_s) / (len(files) / raw_s), goal=0.85)
    print_ratio("re-ingest speed-up over first ingest", ingest_s / reingest_s)


if __name__ == "__main__":
    main()
