"""The triage figure: urgent studies read sooner in worklist order than in arrival order, by the same readers."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.sim.triage import ReadStudy, time_to_read, triage_report, truly_urgent


def test_one_reader_reads_an_urgent_study_before_the_queue_ahead_of_it() -> None:
    # four studies arrive at once; the last is urgent; one reader, 10 s a read
    studies = [ReadStudy(0.0, 0.0, 0.0, False) for _ in range(3)] + [ReadStudy(0.0, 0.0, 0.9, True)]
    assert time_to_read(studies, 10.0, worklist=False).tolist() == [10.0, 20.0, 30.0, 40.0]
    assert time_to_read(studies, 10.0, worklist=True).tolist() == [20.0, 30.0, 40.0, 10.0]
    # two readers share the queue; a study cannot be read before its answer came
    late = [ReadStudy(0.0, 5.0, 0.0, False), ReadStudy(1.0, 1.0, 0.0, False)]
    assert time_to_read(late, 2.0, readers=2).tolist() == [7.0, 2.0]
    with pytest.raises(ValueError, match="read_s"):
        time_to_read(late, 0.0)


def test_triage_report_under_load_shortens_urgent_reads_and_keeps_the_mean() -> None:
    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(1.0, 400))
    urgent = rng.random(400) < 0.1
    # a model that flags most truly urgent studies and a few others
    flagged = np.where(urgent, rng.random(400) < 0.9, rng.random(400) < 0.05)
    studies = [
        ReadStudy(float(t), float(t) + 0.2, float(0.8 * f), bool(u))
        for t, u, f in zip(arrivals, urgent, flagged, strict=True)
    ]
    report = triage_report(studies, rate=1.0, readers=1)
    assert report["urgent_studies"] == int(urgent.sum()) and report["read_s"] == 0.9
    assert report["worklist"]["p50"] < report["fifo"]["p50"] and report["worklist"]["p90"] < report["fifo"]["p90"]
    assert triage_report([], rate=1.0)["worklist"] is None


def test_truly_urgent_follows_the_thresholds_labels() -> None:
    assert truly_urgent({"Pneumothorax": 1.0, "Effusion": 0.0}, {})
    assert not truly_urgent({"Pneumothorax": 0.0, "Effusion": 1.0}, {"Pneumothorax": 0.5})
    assert truly_urgent({"Pneumothorax": 1.0}, {"Pneumothorax": 0.5})
