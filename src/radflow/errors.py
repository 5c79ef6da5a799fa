"""One error hierarchy for radflow.

Every error a user can cause carries a message that names the problem and, where there is
one, the file (and CSV row) or field at fault, plus the HTTP status the server answers with.
The CLI prints the message without a traceback; the server turns it into ``{"error": msg}``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "ConfigError",
    "DataError",
    "ImageDecodeError",
    "NotFoundError",
    "RadflowError",
    "did_you_mean",
]


class RadflowError(Exception):
    """Base class: a problem the user can fix. ``status_code`` is the HTTP answer for it."""

    status_code: int = 400

    def __init__(self, msg: str, status_code: int | None = None):
        super().__init__(msg)
        if status_code is not None:
            self.status_code = status_code


class ConfigError(RadflowError):
    """A parameter, flag or params.yaml key is unknown or has a bad value."""


class NotFoundError(RadflowError):
    """A file, dataset, run or model that was asked for does not exist."""

    status_code = 404


class DataError(RadflowError):
    """A source file or label table is malformed; names the file and, for tables, the row."""

    def __init__(self, msg: str, path: str | Path | None = None, row: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + msg)
        self.path = None if path is None else str(path)
        self.row = row


class ImageDecodeError(DataError):
    """Image bytes that cannot be turned into pixels: corrupt, truncated, unsupported or too large.

    Raised by the one decode path that ingest, batch scoring and the server share, so a bad
    upload becomes a 4xx answer and a bad file among thousands becomes a skipped-file entry.
    """

    status_code = 422


def did_you_mean(value: str, choices: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """A ' Did you mean ...?' hint for a misspelt name, or '' when nothing is close.

    ``aliases`` map names people commonly use to the one among ``choices`` that means the same
    (``learning_rate`` -> ``lr``): spelling alone cannot find those. Case-insensitive; an alias
    whose target is not among ``choices`` is ignored.
    """
    options = list(choices)
    by_meaning = {k.lower(): v for k, v in (aliases or {}).items()}.get(value.lower())
    close = [by_meaning] if by_meaning in options else []
    close += [c for c in difflib.get_close_matches(value, options, n=3, cutoff=0.6) if c not in close]
    if not close:
        lowered = {c.lower(): c for c in options}
        close = [lowered[m] for m in difflib.get_close_matches(value.lower(), lowered, n=3, cutoff=0.6)]
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close[:3]) + "?"
