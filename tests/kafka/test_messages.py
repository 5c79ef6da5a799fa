"""The image message: round trip, field-by-field refusals, de-identification for the topic, urgency."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from radflow.data.dicom import write_dicom
from radflow.kafka import ImageMessage, InvalidMessageError, deidentified_image, is_urgent
from radflow.store import plain_grey_png
from tests.serve.models import png_bytes

STUDY = hashlib.sha256(b"1.2.3.4.5").hexdigest()


def test_round_trip_keeps_every_field() -> None:
    message = ImageMessage.create(png_bytes(0), study=STUDY, model="chest-xray", sex="F", modality="DX")
    assert ImageMessage.decode(message.encode()) == message
    assert str(uuid.UUID(message.id)) == message.id


_ID = "2f1c6a53-8b0e-4d4e-9a57-3c1f0e2b7d90"  # a valid UUID, fixed so every xdist worker collects the same ids


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty message"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "a JSON list"),
        (json.dumps({"id": "42", "image": "AA=="}).encode(), "field 'id'"),
        (json.dumps({"id": _ID}).encode(), "field 'image': missing"),
        (json.dumps({"id": _ID, "image": "%%%"}).encode(), "not valid base64"),
        (json.dumps({"id": _ID, "image": "AAAA", "sha256": "0" * 64}).encode(), "field 'sha256'"),
        (json.dumps({"id": _ID, "image": "AAAA", "study": "MRN-4711"}).encode(), "by hash only"),
        (json.dumps({"id": _ID, "image": "AAAA", "sex": "X"}).encode(), "field 'sex'"),
        (json.dumps({"id": _ID, "image": "AAAA", "modality": "x ray"}).encode(), "field 'modality'"),
        (json.dumps({"v": 2, "id": _ID, "image": "AAAA"}).encode(), "field 'v'"),
    ],
)
def test_a_bad_message_is_refused_naming_the_field(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessageError, match=reason):
        ImageMessage.decode(body)


def test_dicom_reaches_the_topic_as_a_plain_png_without_its_header(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    stored = np.random.default_rng(0).integers(0, 4096, (32, 32)).astype(np.uint16)
    patient = {"PatientName": "Doe^Jane", "PatientID": "MRN-4711", "PatientSex": "F"}
    write_dicom(path, stored, bits_stored=12, attributes=patient)
    image, sex = deidentified_image(path.read_bytes())
    assert plain_grey_png(image) and sex == "F"
    assert b"Doe^Jane" not in image and b"MRN-4711" not in image
    plain = png_bytes(1)
    assert deidentified_image(plain) == (plain, None)  # already nothing but pixels: sent as it is


def test_urgent_labels_are_those_at_or_over_their_threshold() -> None:
    answer = {"findings": [{"label": "Pneumothorax", "probability": 0.8}, {"label": "Edema", "probability": 0.3}]}
    assert is_urgent(answer, {"Pneumothorax": 0.8, "Edema": 0.5}) == ["Pneumothorax"]
    assert is_urgent(answer, {}) == []
    assert is_urgent({"value": 3.0}, {"Pneumothorax": 0.1}) == []


def test_base64_of_the_image_is_what_travels() -> None:
    message = ImageMessage.create(b"\x89PNG-bytes")
    body = json.loads(message.encode())
    assert base64.b64decode(body["image"]) == b"\x89PNG-bytes"
    assert body["sha256"] == hashlib.sha256(b"\x89PNG-bytes").hexdigest()
