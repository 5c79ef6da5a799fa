"""The torch-free inference core: an exported ONNX model behind one object that serving and scoring share.

:class:`RadflowModel` loads an ONNX file made by ``radflow export`` (from a path, an MLflow run or
``models:/NAME@ALIAS``), reads the metadata stored inside it, and runs an ONNX Runtime session
tuned for the machine. Images go through the one decode and preprocessing implementation of the
data layer (:func:`radflow.data.decode.decode_image`, :func:`~radflow.data.preprocess.prepare_pixels`,
:func:`~radflow.data.preprocess.to_model_input`), so a served image gives the tensor training saw.

Nothing on this module's import path imports torch: the serving process stays small and starts fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from radflow.data.boxes import to_original
from radflow.data.decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, DecodedImage, decode_image
from radflow.data.preprocess import PreprocessSpec, prepare_pixels, to_model_input
from radflow.errors import ConfigError, DataError, NotFoundError, RadflowError, did_you_mean
from radflow.hardware import available_cores
from radflow.modelref import ACCEPTED_FORMS, ArtifactNotFoundError, RefKind, ResolvedModel, resolve_model_ref
from radflow.runtime.cam import DEFAULT_ALPHA, DEFAULT_MAX_SIDE, encode_png, render_overlay
from radflow.runtime.masks import original_masks, structure_answers
from radflow.runtime.metadata import CAM_OUTPUT, IMAGE_INPUT, METADATA_KEY, SEX_INPUT, OnnxMetadata, sex_feature
from radflow.tasks import DEFAULT_THRESHOLD, Finding, Prediction
from radflow.tasks.detection import select_detections

__all__ = [
    "DEFAULT_THRESHOLD",
    "ONNX_ARTIFACT_DIR",
    "ONNX_INT8_TAG",
    "ONNX_TAG",
    "Finding",
    "InvalidInputError",
    "MissingOnnxError",
    "Prediction",
    "RadflowModel",
    "available_cores",
    "session_options",
    "to_model_size",
]

ONNX_ARTIFACT_DIR = "onnx"
"""Run artifact folder of exported models."""
ONNX_TAG = "radflow.onnx"
"""Run and model-version tag: artifact path (in the run) of the FP32 ONNX model."""
ONNX_INT8_TAG = "radflow.onnx_int8"
"""Run and model-version tag: artifact path (in the run) of the accepted INT8 ONNX model."""


class InvalidInputError(RadflowError):
    """A request the model cannot answer as given (unknown label, wrong array shape or type, bad extra input)."""

    status_code = 422


class MissingOnnxError(NotFoundError):
    """The run or registered version exists but has no exported ONNX model yet."""


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime options for a CPU-bound image model on this machine.

    One intra-op thread per core (ORT's default can oversubscribe a container's CPU quota), all
    graph optimisations (conv/BN/activation fusion, QDQ folding for INT8) and sequential execution:
    these CNNs are a chain, so parallel branch execution only adds scheduling overhead. Intra-op
    threads do not spin between runs: in a server the event loop, decoding and logging need the
    cores between batches (bench/serve.py, small_cnn at c16: 173 -> 219 img/s, in-process CPU per
    image 8.3 -> 5.1 ms, the lone request's p50 6.8 -> 7.1 ms).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cores()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def to_model_size(pixels: np.ndarray, size: int) -> np.ndarray:
    """``uint8`` images ``(N, H, W)`` at ``size`` x ``size``; others are padded and resampled by ``prepare_pixels``.

    Dataset shards are already at their size, so this is a no-op for a model trained on the same
    size and the ingest resampling otherwise (from 8-bit pixels, as a PNG upload would be).
    """
    if pixels.shape[1:] == (size, size):
        return pixels
    return np.stack([prepare_pixels(p.astype(np.float32) / 255.0, size) for p in pixels])


def _download_onnx(resolved: ResolvedModel, int8: bool) -> Path:
    """The resolved run's ONNX export: the ``runs:/ID/ARTIFACT`` asked for, else the one its tags name."""
    artifact = resolved.ref.artifact or resolved.tag(ONNX_INT8_TAG if int8 else ONNX_TAG)
    if artifact is None:
        kind = "INT8 " if int8 else ""
        flag = " --int8" if int8 else ""
        raise MissingOnnxError(
            f"{resolved.describe()} has no exported {kind}ONNX model; "
            f"run `radflow export {resolved.run_id} --out model.onnx{flag}` first."
        )
    try:
        return resolved.download(artifact)
    except ArtifactNotFoundError as exc:
        raise MissingOnnxError(str(exc)) from None


def _resolve_source(source: str | Path | ResolvedModel, tracking_uri: str | None, int8: bool) -> Path:
    resolved = source if isinstance(source, ResolvedModel) else resolve_model_ref(source, tracking_uri)
    if resolved.path is None:
        return _download_onnx(resolved, int8)
    path = resolved.path
    if not path.is_file():
        raise NotFoundError(f"{resolved.ref.text!r} is not a file; give {ACCEPTED_FORMS}.")
    if resolved.ref.kind is RefKind.CHECKPOINT:
        raise MissingOnnxError(
            f"{path} is a PyTorch checkpoint; the runtime runs ONNX. "
            f"Export it: `radflow export {path} --out model.onnx`."
        )
    return path


class RadflowModel:
    """An exported radflow model ready to answer images; safe to share between threads (ORT sessions are)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        meta: OnnxMetadata,
        source: str = "<model>",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    ):
        self.session = session
        self.meta = meta
        self.source = source
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.spec = PreprocessSpec.from_dict(meta.preprocess or {"size": meta.input_size})
        names = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if IMAGE_INPUT not in names or meta.output not in outputs:
            raise DataError(
                f"the graph lacks input {IMAGE_INPUT!r} or output {meta.output!r} (it has inputs {sorted(names)}, "
                f"outputs {sorted(outputs)}); re-export it with `radflow export`.",
                path=source,
            )
        self.has_cam = CAM_OUTPUT in outputs
        self.needs_sex = SEX_INPUT in names
        untrained = set(meta.untrained_labels or [])
        # None: a label the model never learned has no operating point and is never called positive.
        self.thresholds: dict[str, float | None] = {
            label: None if label in untrained else float((meta.thresholds or {}).get(label, DEFAULT_THRESHOLD))
            for label in meta.labels
        }

    @classmethod
    def load(
        cls,
        source: str | Path | ResolvedModel,
        *,
        tracking_uri: str | None = None,
        int8: bool = False,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
        providers: list[str] | None = None,
    ) -> RadflowModel:
        """Open an ONNX file, ``runs:/ID``, a run id or ``models:/NAME@ALIAS`` (``int8``: its INT8 export).

        ``source`` may be an already resolved reference (:func:`radflow.modelref.resolve_model_ref`):
        the ONNX file then comes from the run it resolved to, and the caller can name the model by
        the same resolution.

        ``max_pixels`` and ``max_aspect_ratio`` bound decoded images (decompression and padding bombs;
        checked from the header, before decoding); ``threads`` defaults to the cores.
        """
        path = _resolve_source(source, tracking_uri, int8)
        try:
            session = ort.InferenceSession(
                str(path), sess_options=session_options(threads), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types, not exported stably
            raise DataError(f"not a readable ONNX model ({str(exc).splitlines()[0][:300]}).", path=path) from None
        props = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise DataError(
                f"this ONNX model has no {METADATA_KEY!r} metadata (labels, preprocessing); "
                "export models with `radflow export`.",
                path=path,
            )
        meta = OnnxMetadata.from_json(props[METADATA_KEY], str(path))
        return cls(session, meta, str(path), max_pixels, max_aspect_ratio)

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    @property
    def task(self) -> str:
        return self.meta.task

    # -- input -----------------------------------------------------------------------------

    def decode(self, data: bytes, name: str = "<upload>") -> DecodedImage:
        """Decode PNG/JPEG/DICOM bytes (ImageDecodeError on bad input, with a 4xx-fit message)."""
        return decode_image(data, name=name, max_pixels=self.max_pixels, max_aspect_ratio=self.max_aspect_ratio)

    def prepare(self, image: DecodedImage | np.ndarray) -> np.ndarray:
        """A decoded image (or float [0, 1] / uint8 grey array) as model-size ``uint8`` pixels."""
        pixels = image.pixels if isinstance(image, DecodedImage) else np.asarray(image)
        if pixels.ndim != 2:
            raise InvalidInputError(f"expected a 2-D grey image, got an array of shape {pixels.shape}.")
        if pixels.dtype == np.uint8:
            if pixels.shape == (self.spec.size, self.spec.size):
                return pixels
            pixels = pixels.astype(np.float32) / 255.0
        return prepare_pixels(pixels, self.spec.size)

    def model_input(self, data: bytes, name: str = "<upload>") -> np.ndarray:
        """The float32 ``(1, C, S, S)`` tensor the model receives for image bytes."""
        return to_model_input(self.prepare(self.decode(data, name)), self.spec)

    def _batch(self, pixels: np.ndarray) -> np.ndarray:
        arr = np.asarray(pixels)
        if arr.dtype != np.uint8:
            raise InvalidInputError(f"pixels must be uint8 grey images (N, H, W), got dtype {arr.dtype}.")
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise InvalidInputError(f"pixels must be uint8 grey images (N, H, W), got shape {arr.shape}.")
        return to_model_size(arr, self.spec.size)

    def _extra(self, n: int, extra: np.ndarray | None) -> dict[str, np.ndarray]:
        if not self.needs_sex:
            if extra is not None:
                raise InvalidInputError("this model takes only the image; drop the extra input.")
            return {}
        if extra is None:
            return {SEX_INPUT: np.full((n, 1), 0.5, np.float32)}  # unknown sex, as in training
        arr = np.asarray(extra, dtype=np.float32).reshape(-1, 1) if np.ndim(extra) < 2 else np.asarray(extra)
        if arr.shape != (n, 1):
            raise InvalidInputError(f"extra input 'sex' must have shape ({n}, 1), got {arr.shape}.")
        return {SEX_INPUT: arr.astype(np.float32)}

    # -- inference ---------------------------------------------------------------------------

    def run(
        self, pixels: np.ndarray, extra: np.ndarray | None = None, cam: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(predictions ``(N, L)``, CAMs ``(N, L, h, w)`` or None) for ``uint8`` pixels ``(N, H, W)``.

        For a segmentation model the predictions are its probability maps ``(N, K, S, S)`` at model
        size, one per structure in label order, and there is no CAM. Pixels not at the model's size
        are padded and resampled by ``prepare_pixels``; ``extra`` is the regression model's sex
        feature ``(N, 1)`` (unknown = 0.5 when omitted).
        """
        names = [self.meta.output, *([CAM_OUTPUT] if cam and self.has_cam else [])]
        outs = self.run_outputs(pixels, names, extra)
        return outs[0], outs[1] if len(outs) > 1 else None

    def run_outputs(self, pixels: np.ndarray, names: list[str], extra: np.ndarray | None = None) -> list[np.ndarray]:
        """The graph outputs ``names`` for ``uint8`` pixels ``(N, H, W)`` in one ONNX Runtime call (as :meth:`run`)."""
        batch = self._batch(pixels)
        feeds = {IMAGE_INPUT: to_model_input(batch, self.spec), **self._extra(len(batch), extra)}
        return list(self.session.run(names, feeds))

    @property
    def dense(self) -> bool:
        """The model answers maps (a segmentation kind), not one row of scores per image."""
        return self.meta.kind.network == "dense"

    def to_prediction(
        self,
        scores: np.ndarray,
        size: tuple[int, int] | None = None,
        spacing: tuple[float, float] | None = None,
    ) -> Prediction:
        """One image's output as its answer: findings at the thresholds, a value, structures or boxes.

        A detection model's anchors ``(A, 4 + K)`` become its kept boxes
        (:func:`~radflow.tasks.detection.select_detections`) at the input's original ``size``
        (:func:`radflow.data.boxes.to_original` undoes the pad-to-square resize); without ``size`` they stay
        at model size. Boxes without area on the original image (wholly in its padding) are dropped.

        A dense model's maps ``(K, S, S)`` become per-structure answers at the input's original
        ``size`` (height, width): the pad-to-square resize undone by
        :func:`~radflow.runtime.masks.original_masks`, then area (mm^2 with ``spacing``), box and COCO RLE.
        Without ``size`` (a tensor input) the masks stay at model size.
        """
        if self.dense:
            maps = np.asarray(scores)
            if maps.ndim != 3 or maps.shape[0] != len(self.meta.labels):
                raise InvalidInputError(
                    f"a {self.task} model's output is (K, S, S) maps for {len(self.meta.labels)} structures, "
                    f"got shape {maps.shape}."
                )
            height, width = size if size is not None else maps.shape[1:]
            masks = original_masks(maps, int(height), int(width))
            return Prediction(structures=structure_answers(masks, self.meta.labels, spacing))
        if self.meta.kind.network == "detection":
            anchors = np.asarray(scores)
            if anchors.ndim != 2 or anchors.shape[1] != 4 + len(self.meta.labels):
                raise InvalidInputError(
                    f"a {self.task} model's output is (A, 4 + {len(self.meta.labels)}) anchors, "
                    f"got shape {anchors.shape}."
                )
            kept = select_detections(anchors).astype(np.float64)
            if size is not None:
                height, width = int(size[0]), int(size[1])
                # A box reaching into the padding ends at the image's edge; one wholly in the padding is not on it.
                kept[:, :4] = to_original(kept[:, :4], height, width, self.spec.size).clip(0, [width, height] * 2)
                kept = kept[(kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])]
            answer = self.meta.kind.encode(kept, self.meta.labels, self.thresholds, None)
            # What a reader's corrected boxes are checked against: the model's labels and the image's bounds.
            answer.box_labels = list(self.meta.labels)
            answer.size = (int(size[0]), int(size[1])) if size is not None else None
            return answer
        row = np.asarray(scores, dtype=np.float64).reshape(-1)
        return self.meta.kind.encode(row, self.meta.labels, self.thresholds, self.meta.target_unit)

    def predict_batch(self, pixels: np.ndarray, extra: np.ndarray | None = None) -> list[Prediction]:
        """Predictions for a batch of ``uint8`` grey images ``(N, H, W)`` (masks of dense models at ``(H, W)``)."""
        arr = np.asarray(pixels)
        scores, _ = self.run(arr, extra, cam=False)
        size = (int(arr.shape[-2]), int(arr.shape[-1]))
        return [self.to_prediction(row, size) for row in scores]

    def predict_bytes(self, data: bytes, name: str = "<upload>", sex: str | None = None) -> Prediction:
        """Decode, preprocess and predict one PNG/JPEG/DICOM image.

        For a regression model ``sex`` ("M"/"F") is taken from the argument, else from the DICOM header.
        A segmentation answer is at the image's decoded size, with mm^2 when a DICOM gives its pixel spacing.
        """
        image = self.decode(data, name)
        extra = None
        if self.needs_sex:
            extra = sex_feature([sex if sex is not None else image.meta.get("sex", "")])
        scores, _ = self.run(self.prepare(image)[None], extra, cam=False)
        spacing = image.meta.get("spacing") if self.dense else None
        height, width = image.pixels.shape
        return self.to_prediction(scores[0], (int(height), int(width)), spacing)

    def cam(self, image: bytes | DecodedImage | np.ndarray, label: str, sex: str | None = None) -> np.ndarray:
        """The raw class activation map ``(h, w)`` of ``label`` for one image."""
        if label not in self.meta.labels:
            raise InvalidInputError(
                f"unknown label {label!r}; this model predicts {', '.join(self.meta.labels)}."
                f"{did_you_mean(label, self.meta.labels)}"
            )
        if not self.has_cam:
            if self.meta.kind.network == "dense":
                raise InvalidInputError(
                    f"{self.source} is a {self.task} model: it has no class activation maps; "
                    "its probability maps are its answer."
                )
            raise ConfigError(f"{self.source} was exported without a 'cam' output; re-export it with `radflow export`.")
        decoded = self.decode(image) if isinstance(image, bytes) else image
        extra = None
        if self.needs_sex:
            found = decoded.meta.get("sex", "") if isinstance(decoded, DecodedImage) else ""
            extra = sex_feature([sex if sex is not None else found])
        _, cams = self.run(self.prepare(decoded)[None], extra)
        assert cams is not None
        return cams[0, self.meta.labels.index(label)]

    def heatmap_png(
        self,
        image: bytes | DecodedImage | np.ndarray,
        label: str,
        *,
        alpha: float = DEFAULT_ALPHA,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ) -> bytes:
        """PNG bytes of ``label``'s CAM blended over the image, at the image's own size (capped at ``max_side``)."""
        decoded = self.decode(image) if isinstance(image, bytes) else image
        cam = self.cam(decoded, label)
        pixels = decoded.pixels if isinstance(decoded, DecodedImage) else np.asarray(decoded)
        if pixels.ndim != 2:
            raise InvalidInputError(f"expected a 2-D grey image, got an array of shape {pixels.shape}.")
        return encode_png(render_overlay(pixels, cam, alpha, max_side))
