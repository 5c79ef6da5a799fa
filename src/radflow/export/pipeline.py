"""``radflow export`` as a library call: checkpoint -> ONNX (+ INT8, + Triton repository) -> MLflow.

Steps, each of which stops the export with a clear error when it fails:

1. resolve MODEL (checkpoint, run id, ``runs:/``, ``models:/NAME@ALIAS``) to a checkpoint;
2. export ONNX with metadata and check parity with PyTorch on real dataset images;
3. optionally quantize to INT8 and accept it only within the validation-metric tolerance;
4. optionally write a Triton model repository with the model ``triton_model`` names (default: the INT8
   model when it was built and kept, else FP32); the report says which one went there;
5. compute the drift reference profile (``reference.json`` beside the ONNX file) from the model's
   dataset, when it is on this machine (:mod:`radflow.monitor.reference`);
6. when the model came from MLflow, log the ONNX file(s) and the reference to its run under
   ``onnx/`` and tag the run and every registered version made from it with the artifact paths, so
   the server and :meth:`radflow.runtime.RadflowModel.load` find them from ``models:/NAME@ALIAS``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from radflow.data.dataset import Dataset
from radflow.errors import ConfigError, NotFoundError
from radflow.export.onnx import DEFAULT_OPSET, check_parity, export_onnx, parity_images, read_metadata
from radflow.export.quantize import (
    DEFAULT_DICE_TOLERANCE,
    DEFAULT_MAE_TOLERANCE,
    DEFAULT_MAP_TOLERANCE,
    DEFAULT_TOLERANCE,
    Int8RefusedError,
    quantize_model,
)
from radflow.export.triton import DEFAULT_MAX_BATCH_SIZE, DEFAULT_QUEUE_DELAY_US, write_triton_repo
from radflow.modelref import ResolvedModel, resolve_model_ref
from radflow.monitor.reference import REFERENCE_TAG, reference_path, write_reference
from radflow.runtime.session import ONNX_ARTIFACT_DIR, ONNX_INT8_TAG, ONNX_TAG

__all__ = ["TRITON_MODELS", "TritonModel", "export_model", "int8_path", "log_onnx_to_mlflow", "triton_choice"]

TritonModel = Literal["fp32", "int8"]
TRITON_MODELS: tuple[TritonModel, ...] = ("fp32", "int8")


def int8_path(out: Path) -> Path:
    """Where the INT8 model of ``out`` goes: ``model.onnx`` -> ``model.int8.onnx``."""
    return out.with_name(f"{out.stem}.int8{out.suffix or '.onnx'}")


def _triton_name(resolved: ResolvedModel, out: Path) -> str:
    base = resolved.name or out.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.-") or "radflow"


def triton_choice(requested: str | None, int8: bool) -> None:
    """Check ``--triton-model`` before any work: a known precision, and ``int8`` only with ``--int8``."""
    if requested is not None and requested not in TRITON_MODELS:
        raise ConfigError(f"--triton-model must be fp32 or int8, got {requested!r}.")
    if requested == "int8" and not int8:
        raise ConfigError("--triton-model int8 needs --int8 (the INT8 model is built by this export).")


def _triton_model(requested: str | None, int8_report: dict[str, Any] | None) -> TritonModel:
    """The precision the Triton repository serves: the requested one, else INT8 when this export kept one."""
    if requested == "int8":
        return "int8"
    if requested == "fp32":
        return "fp32"
    return "int8" if int8_report is not None else "fp32"


def _dataset_path(explicit: Path | None, stored: str) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    if stored and (Path(stored) / "manifest.parquet").is_file():
        return Path(stored)
    return None


def _dataset(explicit: Path | None, stored: str) -> Dataset | None:
    path = _dataset_path(explicit, stored)
    return Dataset.open(path) if path is not None else None


def log_onnx_to_mlflow(run_id: str, files: dict[str, Path], tracking_uri: str | None = None) -> dict[str, Any]:
    """Log ``files`` ({tag: path}) under the run's ``onnx/`` and tag the run and its registered versions."""
    from radflow.tracking import client as make_client
    from radflow.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = make_client(uri)
    artifacts = {}
    for tag, path in files.items():
        client.log_artifact(run_id, str(path), ONNX_ARTIFACT_DIR)
        artifacts[tag] = f"{ONNX_ARTIFACT_DIR}/{path.name}"
        client.set_tag(run_id, tag, artifacts[tag])
    versions = []
    for version in client.search_model_versions(f"run_id='{run_id}'"):
        for tag, artifact in artifacts.items():
            client.set_model_version_tag(version.name, version.version, tag, artifact)
        versions.append(f"{version.name}/{version.version}")
    return {"run_id": run_id, "tracking_uri": uri, "artifacts": artifacts, "versions": versions}


def export_model(
    model: str,
    out: Path,
    *,
    dataset: Path | None = None,
    int8: bool = False,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    mae_tolerance: float = DEFAULT_MAE_TOLERANCE,
    dice_tolerance: float = DEFAULT_DICE_TOLERANCE,
    map_tolerance: float = DEFAULT_MAP_TOLERANCE,
    triton_repo: Path | None = None,
    triton_name: str | None = None,
    triton_model: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    opset: int = DEFAULT_OPSET,
    tracking_uri: str | None = None,
    parity_n: int = 64,
    calibration_images: int = 64,
    latency_time: float = 0.5,
    reference_images: int = 256,
    name: str | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``out`` (see the module docstring); returns a JSON-ready report.

    ``reference_images``: train images profiled for the drift reference (as many val images are
    scored); 0 skips the reference. ``triton_model``: ``fp32`` or ``int8`` (None: INT8 when it was built
    and kept, by its check or by ``force``, else FP32). ``name``: the model name kept in the ONNX metadata
    (default: the registered name of a ``models:/`` reference, else none).
    """
    from radflow.train.checkpoint import load_model

    triton_choice(triton_model, int8)
    out = Path(out)
    if out.is_dir():
        raise NotFoundError(f"--out {out} is a folder; give the ONNX file to write, e.g. {out / 'model.onnx'}.")
    resolved = resolve_model_ref(model, tracking_uri)
    checkpoint, run_id = resolved.checkpoint(), resolved.run_id
    net, meta = load_model(checkpoint)
    export_onnx(net, meta, out, opset=opset, name=name or resolved.name or "")
    pixels, extra, source = parity_images(meta, dataset, n=parity_n)
    try:
        parity = check_parity(net, meta, out, pixels, extra)
    except Exception:
        out.unlink(missing_ok=True)  # never leave a model that failed its parity check where a server finds it
        raise
    parity["source"] = source
    report: dict[str, Any] = {
        "model": model,
        "checkpoint": str(checkpoint),
        "run_id": run_id,
        "onnx": str(out),
        "size_bytes": out.stat().st_size,
        "opset": opset,
        "metadata": dataclasses.asdict(read_metadata(out)),
        "parity": parity,
        "int8": None,
        "triton": None,
        "triton_model": None,
        "reference": None,
        "mlflow": None,
    }
    files = {ONNX_TAG: out}
    # A reference left by an earlier export in this folder would describe another model.
    reference_path(out).unlink(missing_ok=True)
    reference_data = _dataset_path(dataset, meta.dataset_path)
    if reference_images > 0 and reference_data is not None:
        ref_file = write_reference(out, reference_data, n_train=reference_images, n_val=reference_images)
        files[REFERENCE_TAG] = ref_file
        report["reference"] = {"path": str(ref_file), "dataset": str(reference_data)}
    if int8:
        target = int8_path(out)
        try:
            report["int8"] = quantize_model(
                out,
                target,
                _dataset(dataset, meta.dataset_path),
                tolerance=tolerance,
                mae_tolerance=mae_tolerance,
                dice_tolerance=dice_tolerance,
                map_tolerance=map_tolerance,
                force=force,
                calibration_images=calibration_images,
                latency_time=latency_time,
            )
        except Int8RefusedError as exc:
            raise Int8RefusedError(f"{exc} The FP32 model is at {out}.", exc.report) from None
        files[ONNX_INT8_TAG] = target
    if triton_repo is not None:
        precision = _triton_model(triton_model, report["int8"])
        served = int8_path(out) if precision == "int8" else out
        folder = write_triton_repo(
            served,
            triton_repo,
            triton_name or _triton_name(resolved, out),
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
        )
        report["triton"] = str(folder)
        report["triton_model"] = {"precision": precision, "onnx": str(served), "requested": triton_model}
    if run_id is not None:
        report["mlflow"] = log_onnx_to_mlflow(run_id, files, tracking_uri)
    return report
