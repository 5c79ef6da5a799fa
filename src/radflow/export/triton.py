"""A ready Triton Inference Server model repository for an exported model.

Layout written under the repository folder::

    NAME/config.pbtxt     platform onnxruntime_onnx, max_batch_size, dynamic_batching, inputs/outputs
    NAME/labels.txt       one label per line (Triton's classification extension reads it)
    NAME/1/model.onnx     the exported model (metadata included)

Input and output specs are read from the ONNX graph itself, so the config always matches the file:
dims omit the batch dimension, which Triton adds because ``max_batch_size > 0``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import onnx

from radflow.errors import ConfigError
from radflow.export.onnx import read_metadata

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "DEFAULT_QUEUE_DELAY_US", "triton_config", "write_triton_repo"]

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_QUEUE_DELAY_US = 2000
"""How long Triton may hold a request to fill a batch: small against a CNN's CPU latency."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
}


def _specs(values: Any, kind: str) -> list[dict[str, Any]]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or dims[0] != -1:
            raise ConfigError(f"{kind} {value.name!r} has no dynamic batch dimension ({dims}); re-export the model.")
        if tensor.elem_type not in _TYPES:
            raise ConfigError(f"{kind} {value.name!r} has element type {tensor.elem_type}, unsupported here.")
        specs.append({"name": value.name, "data_type": _TYPES[tensor.elem_type], "dims": dims[1:]})
    return specs


def _block(spec: dict[str, Any], label_file: bool = False) -> str:
    dims = ", ".join(str(d) for d in spec["dims"])
    extra = '\n    label_filename: "labels.txt"' if label_file else ""
    return f'  {{\n    name: "{spec["name"]}"\n    data_type: {spec["data_type"]}\n    dims: [ {dims} ]{extra}\n  }}'


def triton_config(
    onnx_path: Path,
    name: str,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
) -> str:
    """The ``config.pbtxt`` text for ``onnx_path`` served as model ``name``."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = _specs([i for i in model.graph.input if i.name not in initializers], "input")
    outputs = _specs(model.graph.output, "output")
    meta = read_metadata(onnx_path)
    preferred = sorted({b for b in (4, 8, 16, max_batch_size) if b <= max_batch_size})
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(_block(s) for s in inputs),
        "]",
        "output [",
        ",\n".join(_block(s, label_file=s["name"] == "probabilities") for s in outputs),
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        f"  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}",
        "]",
        'parameters { key: "radflow.task" value: { string_value: "' + meta.task + '" } }',
    ]
    return "\n".join(lines) + "\n"


def write_triton_repo(
    onnx_path: Path,
    repo: Path,
    name: str,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
) -> Path:
    """Write ``repo/NAME/{config.pbtxt, labels.txt, 1/model.onnx}``; returns the model folder."""
    if not _NAME.match(name):
        raise ConfigError(f"Triton model name {name!r} must be letters, digits, '_', '-' or '.', e.g. 'chest_xray'.")
    if not 1 <= max_batch_size <= 1024:
        raise ConfigError(f"--max-batch-size must be between 1 and 1024, got {max_batch_size}.")
    if max_queue_delay_us < 0:
        raise ConfigError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}.")
    config = triton_config(onnx_path, name, max_batch_size, max_queue_delay_us, instances)
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(read_metadata(onnx_path).labels) + "\n")
    (folder / "config.pbtxt").write_text(config)
    return folder
