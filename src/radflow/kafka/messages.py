"""What travels on radflow's topics: image messages in; answers, urgent findings and dead letters out.

An image message is JSON (so any producer, in any language, can write one)::

    {"v": 1, "id": "<uuid>", "image": "<base64 PNG>", "sha256": "<hex of the image bytes>",
     "study": "<sha256 hex of the study id>" | null, "model": "<model name>" | null, "sex": "M" | "F" | null,
     "modality": "<DICOM Modality, e.g. DX>" | null}

No PHI: the image is a plain 8-bit grey PNG of the de-identified pixels (:func:`deidentified_image`: a
DICOM header, PNG text chunks or JPEG EXIF never reach the topic), and the study is only named by a
hash (a raw identifier is refused). ``id`` becomes the prediction's id, so a message delivered twice
is one prediction row (:func:`radflow.store.prediction_id_scope`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from radflow.errors import RadflowError

__all__ = [
    "HEX64",
    "MESSAGE_VERSION",
    "ImageMessage",
    "InvalidMessageError",
    "answer_message",
    "dead_letter",
    "deidentified_image",
    "is_urgent",
]

MESSAGE_VERSION = 1
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")
"""A sha256 hex digest: the only form in which a message names a study."""


class InvalidMessageError(RadflowError):
    """A message that can never be scored (its reason goes to the dead-letter topic with it)."""

    status_code = 422


@dataclass(frozen=True)
class ImageMessage:
    """One image to score, as the images topic carries it."""

    id: str
    image: bytes
    study: str | None = None
    """sha256 hex of the study id (the routing key: the study's images go to one arm), never the id."""
    model: str | None = None
    """The model the sender routed the image to (None: whichever the worker serves)."""
    sex: str | None = None
    """``M``/``F`` for models that take it (bone age); the PNG has no header to carry it."""
    modality: str | None = None
    """The source's DICOM Modality (``DX``, ``CR``, ...), kept on the prediction row for the worklist's filter."""

    @classmethod
    def create(
        cls,
        image: bytes,
        *,
        study: str | None = None,
        model: str | None = None,
        sex: str | None = None,
        modality: str | None = None,
    ) -> ImageMessage:
        """A new message with a fresh id (the id its prediction will have)."""
        return cls(id=str(uuid.uuid4()), image=image, study=study, model=model, sex=sex, modality=modality)

    def encode(self) -> bytes:
        body = {
            "v": MESSAGE_VERSION,
            "id": self.id,
            "image": base64.b64encode(self.image).decode("ascii"),
            "sha256": hashlib.sha256(self.image).hexdigest(),
            "study": self.study,
            "model": self.model,
            "sex": self.sex,
            "modality": self.modality,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> ImageMessage:
        """Parse and check one message value; InvalidMessageError naming the field otherwise."""
        if not value:
            raise InvalidMessageError("empty message: an image message is a JSON object with 'id' and 'image'.")
        try:
            body = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidMessageError(f"not JSON ({exc}); an image message is a JSON object.") from None
        if not isinstance(body, dict):
            raise InvalidMessageError(f"a JSON {type(body).__name__}, not an object with 'id' and 'image'.")
        version = body.get("v", MESSAGE_VERSION)
        if version != MESSAGE_VERSION:
            raise InvalidMessageError(f"field 'v': version {version!r} is not {MESSAGE_VERSION}, the one understood.")
        message_id = body.get("id")
        try:
            message_id = str(uuid.UUID(str(message_id)))
        except ValueError:
            raise InvalidMessageError(f"field 'id': {message_id!r} is not a UUID.") from None
        encoded = body.get("image")
        if not isinstance(encoded, str) or not encoded:
            raise InvalidMessageError("field 'image': missing; it holds the image as base64.")
        try:
            image = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessageError("field 'image': not valid base64.") from None
        sha = body.get("sha256")
        if sha is not None and sha != hashlib.sha256(image).hexdigest():
            raise InvalidMessageError("field 'sha256': does not match the image bytes (truncated or altered).")
        study = body.get("study")
        if study is not None and (not isinstance(study, str) or not HEX64.match(study)):
            raise InvalidMessageError(
                "field 'study': not a sha256 hex digest; messages name studies by hash only, never by their id."
            )
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidMessageError(f"field 'model': {model!r} is not a model name.")
        sex = body.get("sex")
        if sex is not None and sex not in ("M", "F"):
            raise InvalidMessageError(f"field 'sex': {sex!r} is not M or F.")
        modality = body.get("modality")
        if modality is not None and (not isinstance(modality, str) or not MODALITY.match(modality)):
            raise InvalidMessageError(f"field 'modality': {modality!r} is not a DICOM Modality (e.g. DX, CR).")
        return cls(id=message_id, image=image, study=study, model=model, sex=sex, modality=modality)


def deidentified_image(data: bytes, name: str = "image") -> tuple[bytes, str | None]:
    """``data`` as the images topic may carry it, and the sex its DICOM header gave (else None).

    A plain grey PNG of nothing but pixels is kept as sent; anything else (DICOM, JPEG, PNG with text
    chunks) is decoded and re-encoded from its pixels, the store's own rule for stored inputs
    (:func:`radflow.store.plain_grey_png`), so no header, EXIF or text chunk leaves the door.
    """
    from radflow.data.decode import decode_image
    from radflow.runtime.cam import encode_png, to_grey8
    from radflow.store import plain_grey_png

    if plain_grey_png(data):
        return data, None
    decoded = decode_image(data, name=name)
    sex = decoded.meta.get("sex")
    return encode_png(to_grey8(decoded.pixels)), (str(sex) if sex in ("M", "F") else None)


def is_urgent(answer: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """The labels of ``answer`` at or over their urgency threshold, most probable first (empty: not urgent).

    The worklist's rule (:func:`radflow.triage.urgent_findings`), with thresholds only: without any set,
    nothing goes to the urgent topic.
    """
    from radflow.triage import urgent_findings

    return [str(f["label"]) for f in urgent_findings(answer, thresholds)] if thresholds else []


def answer_message(answer: dict[str, Any], message: ImageMessage, urgent: list[str] | None = None) -> bytes:
    """The predictions (or urgent) topic's value: the answer, the message it answers, and its urgent labels."""
    body = {**answer, "message_id": message.id, "study": message.study}
    if urgent:
        body["urgent"] = urgent
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def dead_letter(
    reason: str, *, topic: str, partition: int, offset: int, message_id: str | None, original: bytes | None
) -> bytes:
    """The dead-letter topic's value: why, where the message was, and its value (base64) for a replay."""
    body = {
        "reason": reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "message_id": message_id,
        "original": base64.b64encode(original or b"").decode("ascii"),
    }
    return json.dumps(body, separators=(",", ":")).encode()
