"""The prediction writer: batched off the request, flushed on demand and at close; stored inputs carry pixels only."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from sqlalchemy import event

from radflow.data.decode import decode_image
from radflow.runtime.cam import to_grey8
from radflow.store import PredictionRecord, Store, new_prediction_ids, plain_grey_png

HOUR = 3600.0
"""A write window no test waits out: anything written before it ends was written because it was asked for."""


def _record(sha: str | None = None) -> PredictionRecord:
    return PredictionRecord("chest", "1", "champion", "champion", {"findings": []}, input_sha256=sha)


def _png(mode: str = "L", text: dict[str, str] | None = None, bits16: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (24, 20), dtype=np.uint8)
    img = Image.fromarray(grey.astype(np.uint16) * 257) if bits16 else Image.fromarray(grey).convert(mode)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_only_an_8_bit_grey_png_of_nothing_but_pixels_is_plain() -> None:
    assert plain_grey_png(_png())
    assert not plain_grey_png(_png(text={"PatientName": "Doe^Jane"}))
    assert not plain_grey_png(_png() + b"trailing bytes")
    assert not plain_grey_png(_png("RGB"))
    assert not plain_grey_png(_png(bits16=True))
    assert not plain_grey_png(_png()[:-12])  # no IEND
    assert not plain_grey_png(b"\xff\xd8\xff\xe0 a JPEG")


def test_a_plain_grey_png_is_stored_as_sent_and_any_other_upload_from_its_pixels(tmp_path: Path) -> None:
    uploads = {
        "plain": _png(),
        "text chunk": _png(text={"PatientName": "Doe^Jane"}),
        "after IEND": _png() + b"PatientName=Doe^Jane",
        "colour": _png("RGB"),
    }
    with Store(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "inputs") as store:
        for data in uploads.values():
            store.log(_record(hashlib.sha256(data).hexdigest()), decode_image(data).pixels, data)
        assert store.flush()
        for name, data in uploads.items():
            stored = store.input_path(hashlib.sha256(data).hexdigest()).read_bytes()
            if name == "plain":
                assert stored == data
                continue
            assert stored != data and b"Doe^Jane" not in stored, name
            assert plain_grey_png(stored), name
            expected = to_grey8(decode_image(data).pixels)
            assert np.array_equal(to_grey8(decode_image(stored).pixels), expected), name


def test_a_prediction_after_a_lull_is_written_at_once_and_under_load_they_share_a_commit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with Store(url, write_window_s=HOUR) as store:
        first = _record()
        store.log(first)  # nothing came before it: no window to wait out
        with Store(url) as other:
            deadline = time.monotonic() + 20
            while not other.predictions() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert [p["id"] for p in other.predictions()] == [first.id]
        commits: list[int] = []
        event.listen(store.engine, "commit", lambda _conn: commits.append(1))
        records = [_record() for _ in range(20)]  # each within the window of the one before
        for record in records:
            store.log(record)
        assert store.get_prediction(records[-1].id)["id"] == records[-1].id  # read from the queue meanwhile
        assert store.flush(timeout_s=10)  # asked for: written now, not after the window
        assert len(commits) == 1
        assert {p["id"] for p in store.predictions()} == {first.id} | {r.id for r in records}


def test_a_workflow_answers_rows_are_handed_over_at_once_readable_queued_and_written_in_one_commit(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    whole = _png()
    with Store(url, inputs_dir=tmp_path / "inputs", write_window_s=HOUR) as store:
        store.log(_record())  # written at once (after a lull): the answer's rows below come within its window
        assert store.flush(timeout_s=10)
        commits: list[int] = []
        event.listen(store.engine, "commit", lambda _conn: commits.append(1))
        ids = new_prediction_ids(4)
        records = [PredictionRecord("chest", "1", None, "workflow", {"findings": []}, id=i) for i in ids]
        records[0].input_sha256 = hashlib.sha256(whole).hexdigest()
        store.log_all([(records[0], None, whole)] + [(r, None, None) for r in records[1:]])
        assert [store.get_prediction(i)["id"] for i in ids] == ids  # each readable while queued
        assert store.flush(timeout_s=10) and len(commits) == 1
        assert {p["id"] for p in store.predictions()} >= set(ids)
        assert store.input_path(str(records[0].input_sha256)).read_bytes() == whole  # the whole image's input kept
    assert len(set(ids)) == 4 and all(len(i) == 36 and i[14] == "4" for i in ids)  # version 4 UUIDs, all distinct


def test_feedback_on_a_queued_prediction_is_committed_after_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with Store(url, write_window_s=HOUR) as store:
        record = _record()
        store.log(record)
        saved = store.add_feedback(record.id, correct=True, reader="r1")
        with Store(url) as other:  # another process's view: both rows are in the database
            assert other.get_prediction(record.id)["id"] == record.id
            assert [f["id"] for f in other.feedback(record.id)] == [saved["id"]]


def test_closing_writes_every_queued_prediction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(url, write_window_s=HOUR)
    records = [_record() for _ in range(5)]
    for record in records:
        store.log(record)
    store.close()
    with Store(url) as reopened:
        assert {p["id"] for p in reopened.predictions()} == {r.id for r in records}
