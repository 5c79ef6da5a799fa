"""Synthetic phantom radiographs written in the exact on-disk formats of real datasets.

No public chest X-ray set can be downloaded everywhere radflow runs, so these generators stand
in for real data: :func:`synth_chest` writes CheXpert's layout (train.csv / valid.csv, PNG or
DICOM), :func:`synth_hand` RSNA bone age's. The findings and bone age are drawn into the pixels
with varying severity, so a model genuinely learns from them and does not score perfectly.
"""

from __future__ import annotations

from radflow.data.synth.chest import CHEXPERT_COLUMNS, DRAWN_FINDINGS, FAKE_PHI_MARKERS, chest_shape, synth_chest
from radflow.data.synth.hand import RSNA_COLUMNS, hand_shape, synth_hand

__all__ = [
    "CHEXPERT_COLUMNS",
    "DRAWN_FINDINGS",
    "FAKE_PHI_MARKERS",
    "RSNA_COLUMNS",
    "chest_shape",
    "hand_shape",
    "synth_chest",
    "synth_hand",
]
