"""Hospital integration: results back to the PACS (DICOM SR/SEG by C-STORE or STOW-RS), studies pulled by DICOMweb.

:mod:`~radflow.pacs.results` builds an answer's DICOM results and sends them
(:class:`ResultWriter`, which every door that delivers results calls), :mod:`~radflow.pacs.send`
is the transport (C-STORE SCU, STOW-RS) with the destination's answer as a :class:`Delivery`,
:mod:`~radflow.pacs.dicomweb` finds and retrieves studies (QIDO-RS, WADO-RS) for pull mode, and
:mod:`~radflow.pacs.settings` holds where results go.
"""

from __future__ import annotations

from radflow.pacs.dicomweb import DicomWebError, DicomWebSource
from radflow.pacs.results import ResultWriter, build_results
from radflow.pacs.send import Delivery, send_cstore, send_stow
from radflow.pacs.settings import ResultSettings, check_ae_title

__all__ = [
    "Delivery",
    "DicomWebError",
    "DicomWebSource",
    "ResultSettings",
    "ResultWriter",
    "build_results",
    "check_ae_title",
    "send_cstore",
    "send_stow",
]
