"""What an exported ONNX model predicts and how its input is made, stored inside the ONNX file.

The export writes one ``metadata_props`` entry, key :data:`METADATA_KEY`, whose value is the JSON
of :class:`OnnxMetadata`; the runtime, the server and Triton tooling read it back. One JSON entry
(rather than one entry per field) keeps nested values (thresholds, preprocessing) typed and lets
the schema grow without touching readers that ignore new fields.

Graph contract (names are stable; the server and ``config.pbtxt`` rely on them):

* inputs: ``image`` float32 ``(N, C, S, S)`` made by :func:`radflow.data.preprocess.to_model_input`;
  regression models also take ``sex`` float32 ``(N, 1)`` (M = 1, F = 0, unknown = 0.5).
* outputs: the task kind's prediction output (:attr:`radflow.tasks.TaskKind.output` with its
  ``activation``): ``probabilities`` ``(N, L)`` (sigmoid for multi-label, softmax for multi-class) or
  ``value`` ``(N, 1)`` in the target unit (months); and ``cam`` ``(N, L, h, w)``, the class
  activation maps of CheXNet: the last feature map weighted by each output's linear-head weights,
  computed in the graph so a client needs no weights to draw a heatmap.
* segmentation models (dense networks) have one output, ``probability_maps`` float32 ``(N, K, S, S)``:
  per structure (``labels``, in mask bit order) the sigmoid probability of each model-size pixel;
  no ``cam`` and no ``embedding``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radflow.data.preprocess import PreprocessSpec
from radflow.errors import DataError
from radflow.tasks import TaskKind, get_task

__all__ = [
    "CAM_OUTPUT",
    "IMAGE_INPUT",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "SEX_INPUT",
    "OnnxMetadata",
    "preprocessing_parameters",
    "sex_feature",
]

METADATA_KEY = "radflow"
METADATA_FORMAT = 1
IMAGE_INPUT = "image"
SEX_INPUT = "sex"
CAM_OUTPUT = "cam"


@dataclass
class OnnxMetadata:
    """The ``radflow`` metadata entry of an exported model."""

    arch: str
    task: str
    labels: list[str]
    input_size: int
    """Side of the square model input, in pixels."""
    name: str = ""
    """The model's name as its exporter gave it (the registered model name); a server serving the plain file
    reports it, with version ``unregistered``. Empty in older exports: the file's stem is reported then."""
    in_chans: int = 1
    preprocess: dict[str, Any] = field(default_factory=dict)
    """:class:`radflow.data.preprocess.PreprocessSpec` as a dict (size, mean, std, channels)."""
    inputs: list[str] = field(default_factory=lambda: [IMAGE_INPUT])
    output: str = "probabilities"
    """Name of the prediction output, the task kind's ``output``: ``probabilities``, ``value`` or
    ``probability_maps`` (segmentation)."""
    thresholds: dict[str, float] | None = None
    """Decision thresholds chosen on validation data by the evaluation; 0.5 is used where missing."""
    untrained_labels: list[str] = field(default_factory=list)
    """Labels with no positive in the train split: served without a threshold, flagged ``untrained``
    and never called positive (a 0.5 default would pass a guess off as an operating point)."""
    dataset_version: str = ""
    target_unit: str | None = None
    target_mean: float | None = None
    target_std: float | None = None
    run_id: str | None = None
    radflow_version: str = ""
    quantization: str | None = None
    """``None`` (FP32), ``"int8-static-qdq"`` or ``"int8-dynamic"``."""
    format: int = METADATA_FORMAT

    @property
    def kind(self) -> TaskKind:
        """The task kind that encodes this model's answers (an unknown task is a ConfigError)."""
        return get_task(self.task)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<model>") -> OnnxMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"the ONNX metadata entry {METADATA_KEY!r} is not JSON ({exc}).", path=source) from None
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [name for name in ("arch", "task", "labels", "input_size") if name not in data]
        if missing:
            raise DataError(f"the ONNX metadata lacks {missing}; re-export the model.", path=source)
        return cls(**{k: v for k, v in data.items() if k in known})


def preprocessing_parameters(spec: PreprocessSpec) -> dict[str, str | int | float]:
    """How a client makes the ``image`` input from a radiograph, as flat key/value parameters.

    Flat scalars because the Open Inference Protocol's ``parameters`` hold only strings, numbers
    and booleans; ``/v2`` model metadata carries them. The steps are those of
    :func:`radflow.data.preprocess.prepare_pixels` then :func:`~radflow.data.preprocess.to_model_input`.
    """
    return {
        "preprocess_size": spec.size,
        "preprocess_channels": spec.channels,
        "preprocess_mean": spec.mean,
        "preprocess_std": spec.std,
        "preprocess_layout": "NCHW",
        "preprocess_steps": (
            "grey levels scaled to [0, 1] by bit depth (DICOM: modality LUT and window, MONOCHROME1 inverted); "
            "pad to a centred square with black; resample to size x size (area when shrinking, bilinear when "
            "enlarging); round to 8 bits; x = (pixel / 255 - mean) / std; repeat over channels"
        ),
    }


def sex_feature(sex: Any) -> np.ndarray:
    """Sex as a model input, ``(n, 1)`` float32: M = 1, F = 0, unknown = 0.5 (as in training).

    The same mapping as :func:`radflow.train.data.sex_feature`, which the serving path cannot
    import without torch; a test keeps the two equal.
    """
    values = np.asarray(sex, dtype=object).reshape(-1)
    out = np.where(values == "M", 1.0, np.where(values == "F", 0.0, 0.5))
    return out.astype(np.float32).reshape(-1, 1)
