"""Model export: ONNX with metadata and a parity check, INT8 quantization, Triton model repositories.

This package imports torch (it reads checkpoints); the serving side uses :mod:`radflow.runtime`.
"""

from __future__ import annotations

from radflow.export.onnx import (
    DEFAULT_OPSET,
    PARITY_ATOL,
    ExportError,
    check_parity,
    export_onnx,
    onnx_metadata,
    parity_images,
    read_metadata,
    write_metadata,
)
from radflow.export.pipeline import export_model, int8_path, log_onnx_to_mlflow
from radflow.export.quantize import (
    DEFAULT_MAE_TOLERANCE,
    DEFAULT_TOLERANCE,
    Int8RefusedError,
    measure_latency,
    quantize_int8,
    quantize_model,
)
from radflow.export.triton import triton_config, write_triton_repo

__all__ = [
    "DEFAULT_MAE_TOLERANCE",
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "PARITY_ATOL",
    "ExportError",
    "Int8RefusedError",
    "check_parity",
    "export_model",
    "export_onnx",
    "int8_path",
    "log_onnx_to_mlflow",
    "measure_latency",
    "onnx_metadata",
    "parity_images",
    "quantize_int8",
    "quantize_model",
    "read_metadata",
    "triton_config",
    "write_metadata",
    "write_triton_repo",
]
