"""The CPU gate between decodes and ORT batches: a slow decode delays a batch by at most ``max_wait_s``."""

from __future__ import annotations

import threading
import time

from radflow.inference.batching import CpuGate


def test_a_slow_decode_holds_a_batch_back_only_briefly_and_other_decodes_not_at_all() -> None:
    gate = CpuGate(max_wait_s=0.05)
    slow_started, slow_done = threading.Event(), threading.Event()
    times: dict[str, float] = {}

    def slow_decode() -> None:
        with gate.shared():
            slow_started.set()
            slow_done.wait(5)  # a huge upload still decoding

    def batch() -> None:
        with gate.exclusive():
            times["batch"] = time.perf_counter()
            time.sleep(0.02)

    def other_decode() -> None:
        with gate.shared():
            times["other"] = time.perf_counter()

    slow = threading.Thread(target=slow_decode)
    slow.start()
    assert slow_started.wait(5)
    start = time.perf_counter()
    runner = threading.Thread(target=batch)
    runner.start()
    time.sleep(0.01)  # the batch is waiting now: a new decode queues behind it
    other = threading.Thread(target=other_decode)
    other.start()
    runner.join(5)
    other.join(5)
    slow_done.set()
    slow.join(5)
    assert times["batch"] - start < 1.0  # ran beside the slow decode after its short wait
    assert times["other"] >= times["batch"]  # a waiting batch still goes before new decodes
    assert times["other"] - start < 1.0


def test_two_batches_never_run_at_once() -> None:
    gate = CpuGate(max_wait_s=0.01)
    running, overlap = [0], [False]
    lock = threading.Lock()

    def batch() -> None:
        with gate.exclusive():
            with lock:
                running[0] += 1
                overlap[0] |= running[0] > 1
            time.sleep(0.01)
            with lock:
                running[0] -= 1

    with gate.shared():  # a decode in progress while the batches line up
        threads = [threading.Thread(target=batch) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(5)
    assert not overlap[0]
