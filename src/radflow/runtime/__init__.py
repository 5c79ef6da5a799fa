"""Torch-free inference: load an exported ONNX model, decode and preprocess images, predict, draw CAMs.

The server and ``radflow predict`` / ``radflow score`` use this package; it never imports torch
(a test runs it in a fresh interpreter and checks), so a serving process needs only ONNX Runtime.
"""

from __future__ import annotations

from radflow.runtime.metadata import METADATA_KEY, OnnxMetadata, sex_feature
from radflow.runtime.score import score_dataset
from radflow.runtime.session import (
    DEFAULT_THRESHOLD,
    ONNX_INT8_TAG,
    ONNX_TAG,
    Finding,
    InvalidInputError,
    MissingOnnxError,
    Prediction,
    RadflowModel,
    available_cores,
    session_options,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "METADATA_KEY",
    "ONNX_INT8_TAG",
    "ONNX_TAG",
    "Finding",
    "InvalidInputError",
    "MissingOnnxError",
    "OnnxMetadata",
    "Prediction",
    "RadflowModel",
    "available_cores",
    "score_dataset",
    "session_options",
    "sex_feature",
]
