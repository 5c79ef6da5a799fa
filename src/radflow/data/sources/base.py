"""What every source reader produces: one record per image, before any pixel is decoded.

A reader parses its label table (or walks its folders), resolves image paths inside the source
folder (:mod:`radflow.data.sources.paths`, the one resolver), applies the label policy, and
returns a :class:`SourceTable`. Rows it cannot use (missing image, bad value) become ``skipped``
entries naming the file, the label table and its row, so one bad row among thousands does not
stop an ingest; ``--strict`` turns them into errors. Ingest replaces every path by a keyed hash
before anything is written, so a skip entry's ``error`` never repeats the path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from radflow.data.boxes import SourceBox
from radflow.data.dataset import Task
from radflow.data.maskfiles import MaskSpec
from radflow.errors import DataError, NotFoundError, did_you_mean

__all__ = [
    "SourceRecord",
    "SourceTable",
    "check_columns",
    "read_csv",
    "skip_entry",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass
class SourceRecord:
    """One image of a source. Raw identifiers are hashed by ingest and never stored as-is."""

    path: Path
    rel_path: str
    """Path of the file relative to the source folder, with forward slashes (hashed before it is stored)."""
    labels: dict[str, float]
    patient: str | None = None
    study: str | None = None
    view: str = ""
    projection: str = ""
    sex: str = ""
    age: float = math.nan
    official_split: str = ""
    row: int | None = None
    """Line number in the label CSV (header = line 1), for error messages."""
    table: str | None = None
    """File name of the label CSV the row is in, for error messages."""
    mask: MaskSpec | None = None
    """Segmentation sources: where the image's mask comes from; ingest reads it and sets the structures' labels."""
    boxes: tuple[SourceBox, ...] | None = None
    """Detection sources: the image's boxes in its original pixels (none: a negative image); ingest maps them."""
    readers: tuple[str, ...] = ()
    """Multi-reader detection sources: everyone who read the image, also those who found nothing."""


@dataclass
class SourceTable:
    records: list[SourceRecord]
    labels: list[str]
    task: Task
    root: Path
    """The source folder every ``rel_path`` (and skipped path) is relative to."""
    skipped: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def skip_entry(path: str | None, error: str, row: int | None = None, table: Path | None = None) -> dict[str, Any]:
    """A skipped row: ``path`` relative to the source folder (or as the table wrote it), ``table`` the label file."""
    return {"path": path, "table": None if table is None else table.name, "row": row, "error": error}


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """Read a label CSV as strings (blank cells stay ''), with clear errors."""
    if not path.is_file():
        raise NotFoundError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {what} ({exc})", path=path) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} is empty", path=path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def check_columns(frame: pd.DataFrame, required: Iterable[str], path: Path, what: str) -> None:
    """Every required column must be present; a misspelt one gets a did-you-mean hint."""
    present = list(frame.columns)
    for column in required:
        if column not in present:
            raise DataError(
                f"{what} has no column {column!r}.{did_you_mean(column, present)} Columns found: {', '.join(present)}",
                path=path,
            )
