"""What the worker commits: per partition, the offset below which every message taken is done."""

from __future__ import annotations

from aiokafka import TopicPartition

from radflow.kafka.worker import _Offsets

A, B = TopicPartition("images", 0), TopicPartition("images", 1)


def test_a_commit_stops_below_the_oldest_message_still_in_flight() -> None:
    offsets = _Offsets()
    for offset in (5, 6, 7):
        offsets.take(A, offset)
    offsets.take(B, 0)
    offsets.done(A, 6)
    offsets.done(A, 7)  # done out of order: 5 is still scoring, so nothing of A may be committed past it
    assert offsets.committable() == {A: 5, B: 0}
    offsets.done(A, 5)
    offsets.done(B, 0)
    assert offsets.committable() == {A: 8, B: 1}
    offsets.committed.update({A: 8, B: 1})
    assert offsets.committable() == {}  # nothing moved since the last commit
    offsets.forget({A})  # revoked: its new owner commits it
    offsets.take(B, 1)
    assert offsets.committable() == {}  # B's next message is in flight: its commit stays at 1
