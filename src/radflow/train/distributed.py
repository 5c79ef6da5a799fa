"""Data-parallel training on torch.distributed: N processes, one model replica each, gradients averaged.

:func:`run_ranks` starts ``train.workers`` processes with torch's own launcher
(``torch.multiprocessing.start_processes``, spawn) on a free loopback port, joins a process group
in each (gloo on CPU, nccl on CUDA with one GPU per rank) and hands each a :class:`Group`: its rank
and the few collectives the training loop needs. The loop stays one code path: with
:data:`SINGLE` (one process) every collective is the identity, the model is not wrapped and the
loader is the usual one.

The global batch rule: ``train.batch_size`` is the *global* batch. Each of the N ranks takes
``batch_size / N`` images a step (:func:`check_workers` refuses a batch that does not split
evenly) and DDP averages the gradients, so a step sees the same number of images as one process
would and the learning rate stays unchanged. The train loader's :class:`DistributedSampler` is
seeded with the single-process sampler's per-epoch seed, so rank ``r`` takes every N-th image of
the very permutation one process would walk: each global step trains on the same images.

A rank that raises or dies ends the whole run: :func:`run_ranks` terminates the others and raises
a :class:`RadflowError` naming the rank and what happened to it.

The ranks are spawned, not forked (CUDA and threads do not survive a fork), so they re-import the
caller's main module: a script that calls :func:`radflow.train.loop.train` with ``train.workers`` > 1
needs the ``if __name__ == "__main__":`` guard (``radflow`` and ``bench/ddp.py`` have it).
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from radflow.errors import ConfigError, RadflowError
from radflow.hardware import available_cores, free_port
from radflow.train.data import ShardBatches, make_loader

__all__ = ["EXIT_AT_ENV", "SINGLE", "Group", "check_workers", "run_ranks"]

T = TypeVar("T")

_TIMEOUT = timedelta(minutes=30)  # a rank waits this long in a collective (rank 0 validating) before giving up

EXIT_AT_ENV = "RADFLOW_TEST_RANK_EXIT_AT"
"""Tests only: ``RANK:STEP`` makes rank RANK of a data-parallel run exit (``os._exit(3)``) before its
STEP-th train step (counted from 1 over the whole run), as a worker the OOM killer takes would."""


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel run, and the collectives the loop uses."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, checkpoints and logs to MLflow."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """The rank's device: its own GPU (``cuda:RANK``) on CUDA, else ``device``."""
        if self.parallel and device.type == "cuda":
            torch.cuda.set_device(self.rank)
            return torch.device("cuda", self.rank)
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` wrapped in DDP (gradients all-reduced in backward), or ``model`` itself on one process."""
        if not self.parallel:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64, so image counts stay exact)."""
        if not self.parallel:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.cpu()]

    def max(self, value: float) -> float:
        if not self.parallel:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def from_main(self, value: T | None) -> T:
        """Rank 0's ``value`` on every rank (others pass ``None``)."""
        if not self.parallel:
            assert value is not None
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def exit_if_told(self, step: int) -> None:
        """The test hook of a rank dying mid-training (:data:`EXIT_AT_ENV`); nothing unless that is set."""
        told = os.environ.get(EXIT_AT_ENV)
        if self.parallel and told and told == f"{self.rank}:{step}":
            os._exit(3)

    def train_loader(
        self,
        data: ShardBatches,
        batch_size: int,
        seed: int,
        num_workers: int,
        drop_last: bool,
        pin_memory: bool,
    ) -> tuple[DataLoader[Any], DistributedSampler[int]]:
        """This rank's train loader (``batch_size`` = the global batch) and its sampler (``set_epoch`` each epoch).

        :func:`radflow.train.data.make_loader` batching this rank's share of the positions: a
        DistributedSampler over them, seeded with ``seed`` (+ the epoch).
        """
        sampler: DistributedSampler[int] = DistributedSampler(
            range(len(data)),  # type: ignore[arg-type]
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=seed,
        )
        loader = make_loader(
            data,
            batch_size // self.world_size,
            shuffle=True,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=pin_memory,
            positions=sampler,
        )
        return loader, sampler

    def _collective_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SINGLE = Group()
"""One process: no process group, every collective the identity."""


def check_workers(workers: int, batch_size: int, device: torch.device) -> None:
    """Refuse a worker count that cannot run here, before any process starts."""
    if workers < 1:
        raise ConfigError(
            f"--workers (train.workers) is the number of data-parallel training processes and must be at least 1, "
            f"got {workers}; DataLoader worker processes are --loader-workers (train.num_workers)."
        )
    if workers == 1:
        return
    if device.type == "cuda":
        if device.index not in (None, 0):
            raise ConfigError(
                f"train.device {str(device)!r} with --workers {workers}: data-parallel ranks take cuda:0..cuda:"
                f"{workers - 1}; use --device cuda (or auto)."
            )
        if workers > torch.cuda.device_count():
            raise ConfigError(
                f"--workers {workers} needs one GPU per worker, but {torch.cuda.device_count()} CUDA device(s) "
                "are visible; lower --workers or use --device cpu."
            )
    elif workers > available_cores():
        raise ConfigError(
            f"--workers {workers} exceeds the {available_cores()} CPU core(s) this process may use; "
            "each data-parallel worker needs at least one."
        )
    if batch_size % workers:
        lower = batch_size - batch_size % workers
        raise ConfigError(
            f"train.batch_size {batch_size} is the global batch and must split evenly across --workers {workers}; "
            f"use {lower or workers} or {lower + workers}."
        )


def run_ranks(fn: Callable[..., T], workers: int, device: torch.device, args: tuple[Any, ...]) -> T:
    """Run ``fn(group, *args)`` in ``workers`` spawned processes; rank 0's return value.

    ``fn`` must be a module-level function (spawn imports it by name in each process). A rank that
    raises or exits non-zero stops every rank, and the error names it.
    """
    import torch.multiprocessing as mp

    port = free_port("127.0.0.1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory(prefix="radflow-ddp-") as tmp:
        result_path = Path(tmp) / "rank0.pkl"
        context = mp.start_processes(
            _rank_main,
            args=(fn, workers, backend, port, result_path, args),
            nprocs=workers,
            join=False,
            start_method="spawn",
        )
        try:
            while not context.join(grace_period=2):
                pass
        except mp.ProcessRaisedException as exc:
            raise RadflowError(_failure(context.processes, exc.error_index, _last_line(str(exc)))) from None
        except mp.ProcessExitedException as exc:
            raise RadflowError(_failure(context.processes, exc.error_index, _exit_reason(exc.exit_code))) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        with result_path.open("rb") as f:
            return pickle.load(f)  # written by our own rank 0 just now


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    workers: int,
    backend: str,
    port: int,
    result_path: Path,
    args: tuple[Any, ...],
) -> None:
    """One rank: join the process group, run ``fn``, hand rank 0's result back through ``result_path``."""
    # Each rank gets its share of the cores; N ranks each using all of them would spend the time switching.
    torch.set_num_threads(max(1, available_cores() // workers))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks share this machine: talk over loopback
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=workers, timeout=_TIMEOUT
    )
    try:
        result = fn(Group(rank, workers), *args)
        if rank == 0:
            tmp = result_path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                pickle.dump(result, f)
            tmp.replace(result_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _failure(processes: list[Any], index: int, reason: str) -> str:
    """The message of a failed run: the rank that failed first, and any other rank killed by a signal.

    The launcher stops the surviving ranks with SIGTERM; a rank killed by anything else (SIGKILL from
    the OOM killer or ``kill -9``) died on its own and is named too, as it may be the root cause.
    """
    if not reason.startswith(("was killed", "exited")):
        reason = f"raised {reason}"
    killed = [
        f"rank {i} {_exit_reason(p.exitcode)}"
        for i, p in enumerate(processes)
        if i != index and p.exitcode is not None and p.exitcode < 0 and p.exitcode != -signal.SIGTERM
    ]
    return (
        f"data-parallel training failed: rank {index} of {len(processes)} {reason}"
        + (f" ({'; '.join(killed)})" if killed else "")
        + "; the other ranks were stopped and the MLflow run is marked FAILED "
        "(`radflow train --resume` continues from the last checkpoint)."
    )
