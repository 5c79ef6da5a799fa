"""INT8 quantization of an exported model with ONNX Runtime, checked for size, speed and accuracy.

Static QDQ quantization (per-channel INT8 weights, UINT8 activations, MinMax ranges) calibrated on
images of the dataset's train split is the default: ORT fuses the QDQ pairs into integer
convolutions. Dynamic quantization (weights only, activation ranges per call) is the fallback when
there are no calibration images. The INT8 model is accepted only when its validation metric stays
within a tolerance of the FP32 model's; latency is measured at batch 1 and 8 with the same session
options as serving, and a note says plainly when INT8 buys little on this model and CPU (without
VNNI, the integer kernels of depthwise and dense-block networks gain little).

Segmentation models (dense networks) are judged by the kind's ``quality_metric``, the val mean Dice:
:func:`validation_metric` scores the val split batch by batch (probability maps against the val masks,
so the split's maps are never all in memory), and the INT8 model is refused when its mean Dice is more
than ``dice_tolerance`` (``export.max_int8_dice_drop``, 0.01) below FP32's.

Detection models are judged by val mAP50 (COCO AP at IoU 0.5, the kind's ``quality_metric``): the
quantized detector's anchors go through the same box selection as validation and serving, and the
INT8 model is refused when its mAP50 is more than ``map_tolerance`` (``export.max_int8_map_drop``,
0.02) below FP32's, so INT8 cannot move or lose boxes unseen.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from radflow.data.dataset import Dataset
from radflow.data.preprocess import PreprocessSpec, to_model_input
from radflow.errors import RadflowError
from radflow.export.onnx import read_metadata, write_metadata
from radflow.runtime.metadata import IMAGE_INPUT, SEX_INPUT, sex_feature
from radflow.runtime.score import score_dataset
from radflow.runtime.session import RadflowModel, to_model_size

__all__ = [
    "DEFAULT_DICE_TOLERANCE",
    "DEFAULT_MAE_TOLERANCE",
    "DEFAULT_MAP_TOLERANCE",
    "DEFAULT_TOLERANCE",
    "LITTLE_GAIN",
    "Int8RefusedError",
    "ShardCalibrationReader",
    "cpu_int8_features",
    "measure_latency",
    "quantize_int8",
    "quantize_model",
    "validation_metric",
]

DEFAULT_TOLERANCE = 0.005
"""Largest accepted drop of validation macro AUROC from FP32 to INT8."""
DEFAULT_MAE_TOLERANCE = 1.0
"""Largest accepted rise of validation MAE (target unit, months) from FP32 to INT8."""
DEFAULT_DICE_TOLERANCE = 0.01
"""Largest accepted drop of validation mean Dice from FP32 to INT8 (``export.max_int8_dice_drop``)."""
DEFAULT_MAP_TOLERANCE = 0.02
"""Largest accepted drop of validation mAP50 from FP32 to INT8 (``export.max_int8_map_drop``)."""
LITTLE_GAIN = 1.2
"""Below this INT8 speed-up at batch 8 the report says INT8 buys little."""


class Int8RefusedError(RadflowError):
    """The INT8 model loses more accuracy than the tolerance allows (or it could not be measured)."""

    def __init__(self, msg: str, report: dict[str, Any]):
        super().__init__(msg)
        self.report = report


class ShardCalibrationReader(CalibrationDataReader):
    """Calibration batches from a dataset split's shards, preprocessed exactly as at serving."""

    def __init__(
        self,
        ds: Dataset,
        spec: PreprocessSpec,
        *,
        split: str = "train",
        n: int = 64,
        batch_size: int = 8,
        with_sex: bool = False,
        seed: int = 0,
    ):
        rows = ds.indices(split) if ds.is_split else ds.indices("all")
        if len(rows) > n:
            rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
        self.rows = rows
        self._feeds: list[dict[str, np.ndarray]] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            feed = {IMAGE_INPUT: to_model_input(to_model_size(ds.images(chunk), spec.size), spec)}
            if with_sex:
                feed[SEX_INPUT] = sex_feature(ds.manifest["sex"].to_numpy()[chunk])
            self._feeds.append(feed)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize_int8(fp32: Path, out: Path, calibration: CalibrationDataReader | None) -> str:
    """Write the INT8 model of ``fp32`` to ``out``; static QDQ with ``calibration``, else dynamic.

    Returns the method ("int8-static-qdq" or "int8-dynamic"); the radflow metadata is carried over.
    """
    metadata = read_metadata(fp32)
    with tempfile.TemporaryDirectory(prefix="radflow-int8-") as tmp:
        # Work on a copy: the quantizer writes helper files next to its input.
        source = Path(tmp) / "fp32.onnx"
        shutil.copyfile(fp32, source)
        # ORT's recommended pre-pass: folds constants into initializers and infers shapes, so every
        # conv bias is quantizable and the quantizer stops warning about it.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        source = prepared
        if calibration is not None:
            quantize_static(
                str(source),
                str(out),
                calibration,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                # The head (Gemm + sigmoid/softmax) and the CAM stay FP32: they are a rounding error
                # of the compute and quantizing them costs probability resolution.
                op_types_to_quantize=["Conv"],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
            method = "int8-static-qdq"
        else:
            # ConvInteger (dynamic Conv) is implemented for uint8 weights only on CPU.
            quantize_dynamic(str(source), str(out), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
            method = "int8-dynamic"
    metadata.quantization = method
    write_metadata(out, metadata)
    return method


def measure_latency(
    path: Path, batch_sizes: tuple[int, ...] = (1, 8), min_time: float = 0.5, threads: int | None = None
) -> dict[str, float]:
    """Median milliseconds per image at each batch size, with the serving session options."""
    model = RadflowModel.load(path, threads=threads)
    size = model.spec.size
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for batch in batch_sizes:
        pixels = rng.integers(0, 256, (batch, size, size), dtype=np.uint8)
        extra = np.full((batch, 1), 0.5, np.float32) if model.needs_sex else None
        model.run(pixels, extra)  # warm-up: first run allocates and plans
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < 200):
            t0 = time.perf_counter()
            model.run(pixels, extra)
            times.append(time.perf_counter() - t0)
        out[str(batch)] = 1000.0 * statistics.median(times) / batch
    return out


def _dense_metric(model: RadflowModel, ds: Dataset, split: str, batch_size: int = 16) -> tuple[str, float | None]:
    """The kind's val mean Dice of a dense model: overlap summaries per batch, then the kind's mean over them."""
    import math

    from radflow.data.masks import unpack

    kind, labels = model.meta.kind, model.labels
    structures = ds.structures
    order = [structures.index(label) for label in labels]
    rows = ds.indices(split)
    known = ds.targets(rows)[:, order]
    overlaps, areas = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        maps, _ = model.run(ds.images(chunk), cam=False)
        truth = unpack(ds.masks(chunk), len(structures))[:, order].astype(np.float32)
        truth[np.isnan(known[start : start + len(chunk)])] = np.nan  # not annotated: no Dice either way
        overlap, area = kind.val_batch(maps, truth)
        overlaps.append(overlap)
        areas.append(area)
    if not overlaps:
        return "mean_dice", None
    value = kind.val_metrics(labels, np.concatenate(overlaps), np.concatenate(areas))["val_mean_dice"]
    return "mean_dice", None if math.isnan(value) else value


def _detection_metric(model: RadflowModel, ds: Dataset, split: str, batch_size: int = 16) -> tuple[str, float | None]:
    """The kind's val mAP50 of a detector: each batch's anchors to kept boxes (as validation keeps them),
    then COCO AP at IoU 0.5 against the split's true boxes, both at model size."""
    from radflow.tasks.detection import pad_rows
    from radflow.train.data import box_targets

    kind, labels = model.meta.kind, model.labels
    rows = ds.indices(split)
    truths = box_targets(ds, rows, labels)
    kept = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        anchors, _ = model.run(ds.images(chunk), cam=False)
        kept.append(kind.val_batch(anchors, np.zeros((len(chunk), 0)))[0])
    if not kept:
        return "map50", None
    width = max([1, *(len(t) for t in truths)])
    return kind.quality_metric(labels, np.concatenate(kept), pad_rows(truths, width, 5))


def validation_metric(path: Path, ds: Dataset, split: str = "val") -> tuple[str, float | None]:
    """("macro_auroc" | "mae" | "mean_dice" | "map50", value) of the ONNX model at ``path`` on ``split`` of
    ``ds``, as its kind scores it."""
    model = RadflowModel.load(path)
    if model.dense:
        return _dense_metric(model, ds, split)
    if model.meta.kind.network == "detection":
        return _detection_metric(model, ds, split)
    scores = score_dataset(model, ds, split, batch_size=32)[model.labels].to_numpy()
    truth = ds.targets(ds.indices(split))
    return model.meta.kind.quality_metric(model.labels, scores, truth)


def _refusal(problem: str) -> str:
    return f"{problem}; the INT8 model was not kept. Pass --force to keep it anyway" + (
        " or raise --int8-tolerance." if "tolerance" in problem else "."
    )


def cpu_int8_features() -> list[str]:
    """The CPU's integer dot-product extensions (what makes INT8 convolutions fast), from /proc/cpuinfo."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    names = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8", "asimddp": "ARM dot-product"}
    return [label for flag, label in names.items() if flag in flags]


def quantize_model(
    fp32: Path,
    out: Path,
    dataset: Dataset | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    mae_tolerance: float = DEFAULT_MAE_TOLERANCE,
    dice_tolerance: float = DEFAULT_DICE_TOLERANCE,
    map_tolerance: float = DEFAULT_MAP_TOLERANCE,
    force: bool = False,
    calibration_images: int = 64,
    latency_time: float = 0.5,
) -> dict[str, Any]:
    """Quantize, then measure size, latency (batch 1 and 8) and the validation metric change.

    Raises :class:`Int8RefusedError` (and removes ``out``) when the metric worsens by more than the
    tolerance (``tolerance`` for macro AUROC, ``mae_tolerance`` for MAE, ``dice_tolerance`` for mean
    Dice, ``map_tolerance`` for mAP50) — or cannot be measured — unless ``force``.
    """
    metadata = read_metadata(fp32)
    spec = PreprocessSpec.from_dict(metadata.preprocess)
    calibration = None
    if dataset is not None:
        calibration = ShardCalibrationReader(dataset, spec, n=calibration_images, with_sex=SEX_INPUT in metadata.inputs)
    method = quantize_int8(fp32, out, calibration if calibration is not None and len(calibration.rows) else None)
    notes: list[str] = []
    if method == "int8-dynamic":
        notes.append("no calibration images (no dataset found); used dynamic quantization, usually slower on CNNs.")
    latency = {
        "fp32": measure_latency(fp32, min_time=latency_time),
        "int8": measure_latency(out, min_time=latency_time),
    }
    speedup = {b: latency["fp32"][b] / latency["int8"][b] for b in latency["fp32"]}
    report: dict[str, Any] = {
        "path": str(out),
        "method": method,
        "calibration_images": 0 if calibration is None else len(calibration.rows),
        "size_bytes": {"fp32": fp32.stat().st_size, "int8": out.stat().st_size},
        "latency_ms_per_image": latency,
        "speedup": speedup,
        "cpu_int8_features": cpu_int8_features(),
        "notes": notes,
        "forced": False,
    }
    if speedup["8"] < LITTLE_GAIN:
        features = ", ".join(report["cpu_int8_features"]) or "no VNNI/AMX integer dot-product instructions"
        notes.append(
            f"INT8 buys little on this model and CPU: at batch 8 it runs {speedup['8']:.2f}x as fast as FP32 "
            f"(CPU: {features}); consider serving the exact FP32 model "
            f"({report['size_bytes']['fp32'] / 1e6:.1f} MB vs {report['size_bytes']['int8'] / 1e6:.1f} MB)."
        )
    problem = None
    if dataset is None or not dataset.is_split or not len(dataset.indices("val")):
        report["metric"] = None
        problem = "the validation metric change could not be measured (no split dataset; pass --dataset DS)"
    else:
        name, before = validation_metric(fp32, dataset)
        _, after = validation_metric(out, dataset)
        report["metric"] = {"name": name, "fp32": before, "int8": after, "split": "val"}
        if before is None or after is None:
            problem = f"val {name} is undefined on this dataset (a label without both classes)"
        elif name == "mae":
            report["metric"]["change"] = after - before
            if after - before > mae_tolerance:
                problem = (
                    f"INT8 raises val MAE by {after - before:.3f} ({before:.3f} -> {after:.3f}), "
                    f"more than the tolerance {mae_tolerance:g}"
                )
        elif name in ("mean_dice", "map50"):
            report["metric"]["change"] = after - before
            allowed, what, setting = (
                (dice_tolerance, "mean Dice", "max_int8_dice_drop")
                if name == "mean_dice"
                else (map_tolerance, "mAP50", "max_int8_map_drop")
            )
            if before - after > allowed:
                problem = (
                    f"INT8 lowers val {what} by {before - after:.4f} ({before:.4f} -> {after:.4f}), "
                    f"more than the tolerance {allowed:g} (export.{setting})"
                )
        else:
            report["metric"]["change"] = after - before
            if before - after > tolerance:
                problem = (
                    f"INT8 lowers val macro AUROC by {before - after:.4f} ({before:.4f} -> {after:.4f}), "
                    f"more than the tolerance {tolerance:g}"
                )
    if problem is not None:
        if not force:
            out.unlink(missing_ok=True)
            raise Int8RefusedError(_refusal(problem), report)
        report["forced"] = True
        notes.append(f"kept by --force although {problem}.")
    return report
