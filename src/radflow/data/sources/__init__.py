"""Readers for each source format; each turns a source into a :class:`SourceTable` for ingest."""

from __future__ import annotations

from pathlib import Path

from radflow.data.formats import BOX_FORMATS, FORMATS, SEGMENTATION_FORMATS
from radflow.data.sources.base import SourceRecord, SourceTable
from radflow.data.sources.boneage import read_boneage
from radflow.data.sources.boxsources import (
    read_coco_box_source,
    read_label_studio_source,
    read_nih_box_source,
    read_rsna_box_source,
    read_vinbig_source,
)
from radflow.data.sources.chexpert import read_chexpert
from radflow.data.sources.dicom_dir import read_dicom_dir
from radflow.data.sources.folder import read_folder
from radflow.data.sources.maskfolder import read_mask_folder
from radflow.data.sources.nih import read_nih
from radflow.data.sources.siim import read_siim
from radflow.errors import ConfigError, did_you_mean

__all__ = ["BOX_FORMATS", "FORMATS", "SEGMENTATION_FORMATS", "SourceRecord", "SourceTable", "read_source"]


_BOX_READERS = {
    "rsna-boxes": read_rsna_box_source,
    "vinbig": read_vinbig_source,
    "nih-boxes": read_nih_box_source,
    "coco-boxes": read_coco_box_source,
    "label-studio": read_label_studio_source,
}
"""Formats whose records carry boxes (task ``detection``; ``--labels`` selects box labels)."""


def read_source(
    fmt: str,
    src: Path,
    *,
    uncertain: str = "zeros",
    labels: str | list[str] | None = None,
    frontal_only: bool = False,
    labels_csv: Path | None = None,
) -> SourceTable:
    """Dispatch to the reader of ``fmt``; flags a format does not use must be left at defaults."""
    if fmt not in FORMATS:
        raise ConfigError(
            f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.{did_you_mean(fmt, FORMATS)}"
        )
    if fmt == "chexpert":
        return read_chexpert(src, uncertain=uncertain, labels=labels, frontal_only=frontal_only)
    if fmt == "nih":
        return read_nih(src, labels=labels, frontal_only=frontal_only)
    if fmt == "siim":
        return read_siim(src, labels=labels)
    if fmt == "masks":
        return read_mask_folder(src, labels=labels)
    if fmt in BOX_FORMATS:
        return _BOX_READERS[fmt](src, labels)
    if labels is not None and fmt in ("boneage", "folder"):
        raise ConfigError(f"--labels does not apply to --format {fmt} (its labels are fixed by the source).")
    if fmt == "boneage":
        return read_boneage(src)
    if fmt == "folder":
        return read_folder(src)
    return read_dicom_dir(src, labels_csv=labels_csv, uncertain=uncertain, labels=labels)
