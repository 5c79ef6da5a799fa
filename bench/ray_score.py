"""Batch scoring on Ray (``radflow score --ray``) beside the single-process scorer on the same cores.

A two-node local Ray cluster (tests/ray_cluster.py: ``ray start --head`` + ``ray start --address``, one
CPU per node) scores the same split of the same dataset (the tests' fixture generator, on disk) with the
same exported model (random weights: speed does not depend on them) as :func:`radflow.runtime.score_dataset`
in one process with one ONNX Runtime thread per core. Ray's time is the whole job as a user waits for it
with the driver already connected: actors start, load the model, score and hand the scores back. The
ratio (Ray images/s over single-process images/s) is what the engine costs on these cores.

The scaling model: from the measured rate of one node (one actor), the measured two-node efficiency
(two-node rate / twice one node's) and the job's fixed cost (actor start-up, measured), the time and
rate for N nodes of the same size; on a real cluster the dataset's shards must be on a filesystem
every node reads (NFS, a bucket mount), whose bandwidth then bounds the rate.

    .venv/bin/python bench/ray_score.py [--n 1200] [--size 128] [--arch resnet18] [--batch-size 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*: the cluster and dataset the tests use

import numpy as np
import torch

from radflow.data.dataset import Dataset
from radflow.export.onnx import export_onnx
from radflow.hardware import available_cores
from radflow.runtime import RadflowModel, score_dataset
from radflow.scale.score import score_dataset_ray
from radflow.train.checkpoint import ModelMeta
from radflow.train.models import create_model
from tests.fixtures import make_dataset
from tests.ray_cluster import ray_cluster

from _table import print_ratio, print_table


def _model(arch: str, ds: Dataset, path: Path) -> Path:
    torch.manual_seed(0)
    net = create_model(arch, len(ds.labels)).eval()
    meta = ModelMeta(
        arch=arch, task=ds.task, labels=ds.labels, num_outputs=len(ds.labels), preprocess=ds.spec.to_dict()
    )
    return Path(export_onnx(net, meta, path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = available_cores()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        dataset = make_dataset(root / "ds", n=args.n, size=args.size, split=False)
        ds = Dataset.open(dataset)
        onnx = _model(args.arch, ds, root / "model.onnx")
        single_model = RadflowModel.load(onnx, threads=cores)
        score_dataset(single_model, ds, "all", args.batch_size)  # warm the session and the page cache
        tiny = make_dataset(root / "tiny", n=args.batch_size, size=args.size, split=False)
        best: dict[str | int, float] = {"single": math.inf, 1: math.inf, 2: math.inf, "fixed": math.inf}
        frames = {}
        gen = ray_cluster()
        cluster = next(gen)
        try:
            # Rounds interleave the scorers, so a shared machine's load hits them alike; each keeps its best round.
            for _ in range(args.rounds):
                started = time.perf_counter()
                single = score_dataset(single_model, ds, "all", args.batch_size)
                best["single"] = min(best["single"], time.perf_counter() - started)
                for actors in (2, 1):
                    started = time.perf_counter()
                    frames[actors] = score_dataset_ray(
                        single_model, dataset, "all", args.batch_size, cluster.address, actors=actors
                    )
                    best[actors] = min(best[actors], time.perf_counter() - started)
                # The job's fixed cost: a one-batch job is all start-up and hand-back.
                started = time.perf_counter()
                score_dataset_ray(single_model, tiny, "all", args.batch_size, cluster.address, actors=1)
                best["fixed"] = min(best["fixed"], time.perf_counter() - started)
        finally:
            gen.close()
    single_s, fixed_s, timings = best["single"], best["fixed"], best
    labels = single.columns[1:]
    worst = max(float(np.abs(f[labels].to_numpy() - single[labels].to_numpy()).max()) for f in frames.values())
    rate = {"single": args.n / single_s, 1: args.n / timings[1], 2: args.n / timings[2]}
    print(
        f"{args.arch} {args.size}px, {args.n} images, batch {args.batch_size}, {cores} cores; "
        f"best of {args.rounds} rounds; cluster start {cluster.startup_s:.1f} s (not counted); "
        f"max |Ray - single| {worst:.1e}"
    )
    print_table(
        ["scorer", "processes x threads", "seconds", "images/s"],
        [
            ["single process", f"1 x {cores}", single_s, rate["single"]],
            ["Ray, 1 node", "1 actor x 1", timings[1], rate[1]],
            [f"Ray, {cluster.nodes} nodes", "2 actors x 1", timings[2], rate[2]],
        ],
    )
    print_ratio("ray_2_nodes_over_single_process", rate[2] / rate["single"], goal=0.85)

    # Per node: what one 1-CPU node scores once running (its rate net of the fixed cost).
    per_node = args.n / max(timings[1] - fixed_s, 1e-9)
    efficiency = (args.n / max(timings[2] - fixed_s, 1e-9)) / (2 * per_node)
    print(
        f"\nscaling model: t(N) = {fixed_s:.1f} s + images / (N x {per_node:.1f} img/s x {efficiency:.2f}); "
        f"per 1-CPU node {per_node:.1f} img/s (measured), two-node efficiency {efficiency:.2f} (measured), "
        f"job fixed cost {fixed_s:.1f} s (measured: a one-batch job); nodes of c CPUs scale per_node by c"
    )
    print(
        "  assumption: efficiency stays at the two-node value for N > 2 (conservative where nodes are separate "
        "machines; here both nodes and the driver share this machine's cores), and the shared filesystem keeps up"
    )
    rows = []
    for nodes in (1, 2, 4, 8, 16, 32):
        eff = 1.0 if nodes == 1 else efficiency
        for images in (10_000, 100_000):
            seconds = fixed_s + images / (nodes * per_node * eff)
            rows.append([nodes, images, seconds, images / seconds])
    print_table(["nodes (1 CPU)", "images", "predicted s", "predicted images/s"], rows)


if __name__ == "__main__":
    main()
