"""PyTorch checkpoint to ONNX: the graph, its metadata, and the parity check against PyTorch.

The exported graph wraps the trained network so that it returns what a client needs and nothing it
would have to recompute (see :mod:`radflow.runtime.metadata` for the input/output contract). A pooled
network (classifier, regressor) returns probabilities (or the regression value in months), the class
activation maps of every output and the penultimate-layer ``embedding`` (the globally averaged last
feature map) that drift monitoring summarises (:mod:`radflow.monitor.reference`). CAMs are
computed in the graph as a 1x1 convolution of the last feature map with the linear head's weights,
which is the CheXNet CAM and costs a few kFLOPs, instead of shipping the whole feature map (1024
channels for DenseNet-121) and the head weights to every client.

A dense network (segmentation, the task kind's ``network == "dense"``) returns one output only: the
probability map of each structure ``(N, K, S, S)``, the kind's activation (a sigmoid per structure)
inside the graph. It has no CAM (the maps are the explanation) and no ``embedding``: the dense
architectures do not expose their bottleneck feature map (:class:`radflow.train.models.SegNet` has
``forward_maps`` only), so there is nothing to pool without re-implementing each network's forward.

A detection network (``network == "detection"``) returns one output, ``detections`` ``(N, A, 4 + K)``:
per anchor its decoded box at model size (clipped to the image) and the kind's score per label
(FCOS's ``sqrt(sigmoid(class) * sigmoid(centre-ness))``, in the graph). The score threshold and
per-label NMS run after the graph, in :func:`radflow.tasks.detection.select_detections` (NumPy), as
in training's validation: the graph keeps a dynamic batch and the runtime stays torch-free.

The TorchScript-based exporter (``dynamo=False``) is used: it gives a dynamic batch dimension from
``dynamic_axes``, exports these CNNs exactly (parity within 1e-6), takes about a second, and needs
no extra dependency (the torch.export-based exporter needs ``onnxscript``).
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from radflow.data.dataset import Dataset
from radflow.data.preprocess import PreprocessSpec, to_model_input
from radflow.errors import ConfigError, RadflowError
from radflow.monitor.reference import EMBEDDING_OUTPUT
from radflow.runtime.metadata import CAM_OUTPUT, IMAGE_INPUT, METADATA_KEY, SEX_INPUT, OnnxMetadata, sex_feature
from radflow.runtime.session import RadflowModel, to_model_size
from radflow.tasks import get_task
from radflow.train.checkpoint import ModelMeta
from radflow.train.models import DetNet, SegNet
from radflow.train.predict import outputs_to_predictions

__all__ = [
    "DEFAULT_OPSET",
    "PARITY_ATOL",
    "DenseExportWrapper",
    "DetectionExportWrapper",
    "ExportError",
    "ExportWrapper",
    "check_parity",
    "export_onnx",
    "export_wrapper",
    "graph_outputs",
    "onnx_metadata",
    "parity_images",
    "read_metadata",
    "write_metadata",
]

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4
"""Largest accepted |ONNX - PyTorch| of a probability (of the normalised value for regression)."""


class ExportError(RadflowError):
    """The exported model does not behave like the PyTorch model, or cannot be exported."""

    status_code = 500


class ExportWrapper(nn.Module):
    """The network as exported: ``(image[, sex]) -> (probabilities | value, cam, embedding)``."""

    def __init__(self, model: nn.Module, meta: ModelMeta):
        super().__init__()
        fc = getattr(model, "fc", None)
        num_features = getattr(model, "num_features", None)
        if not isinstance(fc, nn.Linear) or not isinstance(num_features, int) or not hasattr(model, "forward_features"):
            raise ConfigError(
                f"architecture {meta.arch!r} has no forward_features + linear head 'fc'; "
                "radflow export needs a model built by radflow.train.models.create_model."
            )
        self.model = model
        self.kind = get_task(meta.task)
        self.target_mean = float(meta.target_mean or 0.0)
        self.target_std = float(meta.target_std or 1.0)
        # Extra inputs (sex) are appended after the pooled features; they have no spatial map.
        self.register_buffer("cam_weight", fc.weight.detach()[:, :num_features, None, None].clone())

    def forward(
        self, image: torch.Tensor, sex: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(image)  # type: ignore[operator]
        logits = self.model.forward_head(features, sex)  # type: ignore[operator]
        out = self.kind.activate(logits, self.target_mean, self.target_std)
        weight: torch.Tensor = self.cam_weight  # type: ignore[assignment]
        cam = F.conv2d(features, weight.to(features.dtype))
        embedding = F.adaptive_avg_pool2d(features, 1).flatten(1)
        return out, cam, embedding


class DenseExportWrapper(nn.Module):
    """A dense network as exported: ``image -> (probability maps (N, K, S, S),)``, the kind's activation applied."""

    def __init__(self, model: nn.Module, meta: ModelMeta):
        super().__init__()
        if not isinstance(model, SegNet):
            raise ConfigError(
                f"architecture {meta.arch!r} has no forward_maps; radflow exports segmentation networks built by "
                "radflow.train.models.create_model (small_unet, monai_unet, monai_segresnet)."
            )
        self.model = model
        self.kind = get_task(meta.task)

    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        logits = self.model.forward_maps(image)
        return (self.kind.activate(logits, None, None),)


class DetectionExportWrapper(nn.Module):
    """A detector as exported: ``image -> (detections (N, A, 4 + K),)``, per anchor its box and score per label."""

    def __init__(self, model: nn.Module, meta: ModelMeta):
        super().__init__()
        self.model = model
        self.kind = get_task(meta.task)

    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (self.kind.activate(self.model(image), None, None),)


def export_wrapper(model: nn.Module, meta: ModelMeta) -> nn.Module:
    """The wrapper the network is exported through, by the task kind's network (pooled, dense or detection).

    An architecture of the other kind than its task (a UNet with a multi-label task) is a ConfigError.
    """
    kind = get_task(meta.task)
    network = "dense" if isinstance(model, SegNet) else "detection" if isinstance(model, DetNet) else "pooled"
    if network != kind.network:
        raise ConfigError(
            f"architecture {meta.arch!r} is a {network} network but task {meta.task!r} needs a {kind.network} one; "
            f"train it with an architecture of that kind."
        )
    if kind.network == "detection":
        return DetectionExportWrapper(model, meta)
    return DenseExportWrapper(model, meta) if kind.network == "dense" else ExportWrapper(model, meta)


def graph_outputs(meta: ModelMeta) -> list[str]:
    """Names of the graph's outputs, in the order the wrapper returns them."""
    kind = get_task(meta.task)
    if kind.network in ("dense", "detection"):
        return [kind.output]
    return [kind.output, CAM_OUTPUT, EMBEDDING_OUTPUT]


def _radflow_version() -> str:
    try:
        return version("radflow")
    except PackageNotFoundError:
        return "unknown"


def onnx_metadata(meta: ModelMeta, quantization: str | None = None, name: str = "") -> OnnxMetadata:
    """The ONNX metadata entry for a checkpoint's :class:`ModelMeta`; ``name`` the registered model name, if any."""
    spec = PreprocessSpec.from_dict(meta.preprocess) if meta.preprocess else PreprocessSpec()
    return OnnxMetadata(
        name=name,
        arch=meta.arch,
        task=meta.task,
        labels=list(meta.labels),
        input_size=spec.size,
        in_chans=meta.in_chans,
        preprocess=spec.to_dict(),
        inputs=[IMAGE_INPUT, *([SEX_INPUT] if meta.extra_inputs else [])],
        output=get_task(meta.task).output,
        thresholds=dict(meta.thresholds) if meta.thresholds else None,
        untrained_labels=list(meta.untrained_labels),
        dataset_version=meta.dataset_version,
        target_unit=meta.target_unit,
        target_mean=meta.target_mean,
        target_std=meta.target_std,
        run_id=meta.run_id,
        radflow_version=_radflow_version(),
        quantization=quantization,
    )


def write_metadata(path: Path, metadata: OnnxMetadata) -> None:
    """Store ``metadata`` in the ONNX file's ``metadata_props`` (replacing an earlier entry)."""
    model = onnx.load(str(path))
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    model.doc_string = f"radflow {metadata.arch} {metadata.task}: {', '.join(metadata.labels)}"
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def read_metadata(path: Path) -> OnnxMetadata:
    """The ``radflow`` metadata entry of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ConfigError(f"{path} has no {METADATA_KEY!r} metadata; it was not exported by radflow.")
    return OnnxMetadata.from_json(props[METADATA_KEY], str(path))


def export_onnx(model: nn.Module, meta: ModelMeta, out: Path, opset: int = DEFAULT_OPSET, name: str = "") -> Path:
    """Write ``model`` as ONNX with a dynamic batch dimension and the radflow metadata; returns ``out``.

    ``name``: the registered model name, kept in the metadata so a server given only the file reports it.
    """
    if opset < 17:
        raise ConfigError(f"opset must be 17 or newer (LayerNorm/resize semantics radflow relies on), got {opset}.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = onnx_metadata(meta, name=name)
    wrapper = export_wrapper(model, meta).eval().cpu()
    image = torch.zeros(2, meta.in_chans, metadata.input_size, metadata.input_size)
    args: tuple[torch.Tensor, ...] = (image,)
    if SEX_INPUT in metadata.inputs:
        args = (image, torch.full((2, 1), 0.5))
    outputs = graph_outputs(meta)
    axes = {name: {0: "batch"} for name in [*metadata.inputs, *outputs]}
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated on every call; see the module docstring.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(tmp),
            dynamo=False,
            input_names=metadata.inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    write_metadata(tmp, metadata)
    os.replace(tmp, out)
    return out


def parity_images(
    meta: ModelMeta, dataset: Path | None = None, n: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(``uint8`` pixels, sex feature or None, description) of up to ``n`` images to compare on.

    Taken from ``dataset`` when given, else from the dataset the model was trained on (its val
    split when split); synthetic noise-and-disc images only when neither is on this machine.
    """
    spec = PreprocessSpec.from_dict(meta.preprocess) if meta.preprocess else PreprocessSpec()
    candidates = [dataset] if dataset is not None else []
    if meta.dataset_path:
        candidates.append(Path(meta.dataset_path))
    for path in candidates:
        if path is None or not (path / "manifest.parquet").is_file():
            continue
        ds = Dataset.open(path)
        split = "val" if ds.is_split and len(ds.indices("val")) else "all"
        rows = ds.indices(split)[:n]
        if len(rows) == 0:
            continue
        pixels = to_model_size(ds.images(rows), spec.size)
        extra = sex_feature(ds.manifest["sex"].to_numpy()[rows]) if meta.extra_inputs else None
        return pixels, extra, f"{len(rows)} images of {path} ({split} split)"
    rng = np.random.default_rng(seed)
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for _ in range(min(n, 16)):
        img = rng.normal(0.3, 0.08, (size, size))
        cy, cx, r = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size, rng.uniform(0.05, 0.2) * size
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += 0.5
        images.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    extra = rng.choice([0.0, 1.0], size=(len(images), 1)).astype(np.float32) if meta.extra_inputs else None
    return np.stack(images), extra, f"{len(images)} synthetic images (no dataset found; pass --dataset)"


@torch.no_grad()
def check_parity(
    model: nn.Module,
    meta: ModelMeta,
    onnx_path: Path,
    pixels: np.ndarray,
    extra: np.ndarray | None = None,
    atol: float = PARITY_ATOL,
    batch_size: int = 7,
) -> dict[str, Any]:
    """Compare the ONNX file (through the runtime) with PyTorch; raise :class:`ExportError` beyond ``atol``.

    Batches of ``batch_size`` (odd on purpose: the last batch differs in size, which exercises the
    dynamic batch dimension). Returns ``{"images", "max_abs_diff", "cam_max_rel_diff", "atol"}``; a
    dense model's probability maps are compared pixel by pixel and it has no CAM (``cam_max_rel_diff`` 0).
    """
    runtime = RadflowModel.load(onnx_path, threads=None)
    spec = runtime.spec
    model = model.eval().cpu()
    normalised = get_task(meta.task).normalise_targets
    scale = float(meta.target_std or 1.0) if normalised else 1.0
    worst, worst_cam = 0.0, 0.0
    wrapper = export_wrapper(model, meta).eval()
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        sex = None if extra is None else extra[start : start + batch_size]
        x = torch.from_numpy(to_model_input(chunk, spec))
        sex_t = None if sex is None else torch.from_numpy(np.ascontiguousarray(sex, dtype=np.float32))
        reference = outputs_to_predictions(model(x, sex_t), meta).numpy()
        got, cam = runtime.run(chunk, sex)
        if got.shape != reference.shape:
            raise ExportError(
                f"ONNX output {runtime.meta.output!r} has shape {got.shape}, PyTorch's {reference.shape}; "
                f"please report it with the architecture ({meta.arch})."
            )
        worst = max(worst, float(np.max(np.abs(got - reference))) / scale)
        if cam is not None:
            cam_reference = wrapper(x, sex_t)[1].numpy()
            rel = np.max(np.abs(cam - cam_reference)) / max(1.0, float(np.max(np.abs(cam_reference))))
            worst_cam = max(worst_cam, float(rel))
    result = {"images": len(pixels), "max_abs_diff": worst, "cam_max_rel_diff": worst_cam, "atol": atol}
    what = "normalised value" if normalised else "probability"
    if not worst <= atol:
        raise ExportError(
            f"ONNX parity check failed: a {what} differs from PyTorch by {worst:.3g} (> {atol:g}) on "
            f"{len(pixels)} images. The ONNX file is not usable; please report it with the architecture "
            f"({meta.arch}) and the torch/onnxruntime versions."
        )
    if not worst_cam <= 1e-3:
        raise ExportError(
            f"ONNX parity check failed: the class activation maps differ from PyTorch by {worst_cam:.3g} "
            f"(relative, > 1e-3) on {len(pixels)} images; please report it with the architecture ({meta.arch})."
        )
    return result
