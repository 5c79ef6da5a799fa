"""The names of the source formats ingest reads: importable without the readers (pandas, pydicom), so the CLI
can list them in its help without paying for the readers until a command runs."""

from __future__ import annotations

__all__ = ["BOX_FORMATS", "FORMATS", "SEGMENTATION_FORMATS"]

BOX_FORMATS = ("rsna-boxes", "vinbig", "nih-boxes", "coco-boxes", "label-studio")
"""Formats whose records carry boxes (task ``detection``; ``--labels`` selects box labels)."""
SEGMENTATION_FORMATS = ("siim", "masks")
"""Formats whose records carry masks (task ``segmentation``; ``--labels`` selects structures)."""
FORMATS = ("chexpert", "nih", "boneage", "folder", "dicom", *SEGMENTATION_FORMATS, *BOX_FORMATS)
"""Every format ``radflow ingest --format`` takes (one reader each in :mod:`radflow.data.sources`)."""
