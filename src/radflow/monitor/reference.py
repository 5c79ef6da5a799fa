"""The reference profile of a model version: what its inputs and outputs looked like on its own data.

Drift is only measurable against something. At export time (``radflow export`` and the workspace's
export stage) the model's dataset is summarised into ``reference.json`` beside ``model.onnx``, and
logged with it to the run, so a server that loads the model finds its reference too:

* inputs, from a sample of the train split: a per-image intensity summary (mean, std and the 5th,
  50th and 95th percentiles of the preprocessed model-size pixels — the same pixels the service
  summarises, made by the one preprocessing implementation) and the view mix where known;
* outputs, from the val split run through the exported ONNX model itself: per-label scores
  (or the regression value), and the penultimate-layer embedding (the ``embedding`` output, the
  global average of the last feature map; for models exported before it existed, the spatial mean
  of the ``cam`` output, i.e. that embedding projected on the head's weights). A segmentation
  model's probability maps are summarised per image and structure (:func:`output_feature_values`):
  ``area:<s>``, the predicted mask (probability >= 0.5) as a fraction of the model-size pixels, and
  ``confidence:<s>``, the mean probability inside that mask (undefined on an image where it is
  empty, so those images are left out of that feature); it has no embedding output. A detector's
  anchors are summarised by the boxes it answers: ``boxes:<l>`` (kept boxes per image) and
  ``top_score:<l>`` (their best score, 0 when none).

Each numeric feature keeps decile bin edges with their probabilities (for PSI), a bounded sample
(for Kolmogorov-Smirnov), quantiles and moments (for people). Nothing here imports torch: the
profile is computed with ONNX Runtime, so the service could rebuild one too.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radflow.errors import DataError
from radflow.tasks import get_task
from radflow.tasks.detection import detection_features, select_detections
from radflow.tasks.segmentation import MASK_THRESHOLD

if TYPE_CHECKING:
    from radflow.runtime.session import RadflowModel

__all__ = [
    "EMBEDDING_OUTPUT",
    "INPUT_FEATURES",
    "REFERENCE_FILE",
    "REFERENCE_FORMAT",
    "REFERENCE_TAG",
    "EmbeddingProfile",
    "NumericProfile",
    "Reference",
    "compute_reference",
    "embedding_source",
    "embeddings_from",
    "fetch_reference",
    "input_summary",
    "load_reference",
    "output_feature_values",
    "output_features",
    "psi_edges",
    "reference_path",
    "write_reference",
]

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"
REFERENCE_FORMAT = 1
REFERENCE_TAG = "radflow.reference"
"""Run and model-version tag: artifact path (in the run) of the reference profile."""
EMBEDDING_OUTPUT = "embedding"
"""Graph output ``(N, F)``: the globally averaged last feature map (the head's input)."""
INPUT_FEATURES = ("intensity_mean", "intensity_std", "intensity_p05", "intensity_p50", "intensity_p95")
"""Per-image input summary, on preprocessed model-size pixels scaled to [0, 1]."""
PSI_BINS = 10
SAMPLE_SIZE = 512
"""Reference values kept per feature for the KS test (a bounded file, enough for a sharp test)."""
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def input_summary(pixels: np.ndarray) -> np.ndarray:
    """:data:`INPUT_FEATURES` of one ``uint8`` image ``(H, W)``, from a 256-bin histogram (~0.1 ms at 224 px).

    The histogram (OpenCV's, twice as fast as ``np.bincount``) gives all five numbers in one pass
    over the pixels; percentiles are read off its cumulative sum (to 1/255, the images' own resolution).
    """
    import cv2

    img = np.ascontiguousarray(pixels)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"input_summary takes a uint8 (H, W) image, got {img.dtype} {img.shape}.")
    hist = cv2.calcHist([img], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    total = hist.sum()
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean = float(hist @ levels / total)
    std = float(np.sqrt(max(0.0, hist @ (levels - mean) ** 2 / total)))
    cdf = np.cumsum(hist) / total
    p05, p50, p95 = (float(np.searchsorted(cdf, q) / 255.0) for q in (0.05, 0.5, 0.95))
    return np.array([mean, std, p05, p50, p95], dtype=np.float64)


def output_features(labels: list[str], task: str) -> list[str]:
    """Names of the output features, as the task kind declares them (``score:LABEL`` per label, or ``value``).

    A dense kind (segmentation) declares ``area:<s>``; the mask confidence ``confidence:<s>`` of each
    structure is added after them here until the kind declares it too.
    """
    kind = get_task(task)
    names = kind.drift_features(labels)
    if kind.network == "dense":
        names += [f"confidence:{label}" for label in labels if f"confidence:{label}" not in names]
    return names


def output_feature_values(outputs: np.ndarray, labels: list[str], features: list[str]) -> np.ndarray:
    """``(N, len(features))`` float64 values of the named output features for a batch of model outputs.

    ``outputs`` is the prediction output: ``(N, L)`` scores (``score:<label>``, or ``value``), or
    ``(N, K, S, S)`` probability maps (``area:<s>``: share of pixels at probability >= 0.5;
    ``confidence:<s>``: mean probability over those pixels, NaN when there are none), or a detector's
    activated anchors ``(N, A, 4 + K)`` (``boxes:<l>``, ``top_score:<l>``: the kept boxes of each image,
    :func:`~radflow.tasks.detection.select_detections`, counted and their best score per label, as
    :func:`~radflow.tasks.detection.detection_features` makes them).
    """
    arr = np.asarray(outputs)
    columns = []
    boxes: list[dict[str, float]] | None = None
    for name in features:
        kind, _, label = name.partition(":")
        if name == "value":
            columns.append(arr[:, 0].astype(np.float64))
            continue
        if label not in labels or kind not in ("score", "area", "confidence", "boxes", "top_score"):
            raise DataError(f"unknown output feature {name!r} for labels {labels}.")
        if kind in ("boxes", "top_score"):
            if arr.ndim != 3 or arr.shape[2] != 4 + len(labels):
                raise DataError(
                    f"output feature {name!r} needs activated anchors (N, A, {4 + len(labels)}), got shape {arr.shape}."
                )
            if boxes is None:  # the boxes the service answers, kept once per image for every feature
                boxes = [detection_features(select_detections(a), labels) for a in arr]
            columns.append(np.array([b[name] for b in boxes], dtype=np.float64))
            continue
        j = labels.index(label)
        if kind == "score":
            columns.append(arr[:, j].astype(np.float64))
            continue
        if arr.ndim != 4:
            raise DataError(f"output feature {name!r} needs probability maps (N, K, S, S), got shape {arr.shape}.")
        probs = arr[:, j].reshape(len(arr), -1).astype(np.float64)
        mask = probs >= MASK_THRESHOLD
        area = mask.sum(axis=1)
        if kind == "area":
            columns.append(area / probs.shape[1])
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                columns.append(np.where(area > 0, (probs * mask).sum(axis=1) / area, np.nan))
    return np.stack(columns, axis=1) if columns else np.zeros((len(arr), 0))


def embedding_source(output_names: set[str] | list[str]) -> str | None:
    """Which graph output the embedding summary comes from: ``embedding``, else ``cam``, else None."""
    names = set(output_names)
    if EMBEDDING_OUTPUT in names:
        return EMBEDDING_OUTPUT
    return "cam" if "cam" in names else None


def embeddings_from(output: np.ndarray, source: str) -> np.ndarray:
    """``(N, D)`` embedding rows from the graph output named ``source`` (a CAM is averaged over space)."""
    arr = np.asarray(output, dtype=np.float64)
    if source == "cam":
        return arr.reshape(arr.shape[0], arr.shape[1], -1).mean(axis=2)
    return arr.reshape(arr.shape[0], -1)


def psi_edges(values: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner PSI bin edges of ``values``: their quantiles, ties merged, with each tied value a bin of its own.

    When many values are equal (``intensity_p05`` is 0 on most images with a black border), several
    deciles coincide; merged, they leave one wide bin that holds the tied value *and* its neighbours, so
    a shift off the tie (a brighter border) stays in that bin and PSI reads 0 while KS sees it. An edge
    just above each tied value makes the tie its own bin ``[v, v]``: any live value that moved off it counts.
    """
    quantiles = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    edges, repeats = np.unique(quantiles, return_counts=True)
    tied = edges[repeats > 1]
    return np.unique(np.concatenate([edges, np.nextafter(tied, np.inf)]))


@dataclass
class NumericProfile:
    """One feature's reference distribution."""

    edges: list[float]
    """Inner bin edges (:func:`psi_edges` of the reference); bins are (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    probs: list[float]
    """Share of reference values per bin (``len(edges) + 1`` entries)."""
    sample: list[float]
    """Up to :data:`SAMPLE_SIZE` reference values, for the KS test."""
    n: int
    mean: float
    std: float
    quantiles: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: np.ndarray, seed: int = 0, bins: int = PSI_BINS) -> NumericProfile:
        vals = np.asarray(values, dtype=np.float64).ravel()
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            raise DataError("cannot profile a feature without finite values.")
        edges = psi_edges(vals, bins)
        counts = np.bincount(np.searchsorted(edges, vals, side="right"), minlength=len(edges) + 1)
        rng = np.random.default_rng(seed)
        sample = vals if vals.size <= SAMPLE_SIZE else rng.choice(vals, SAMPLE_SIZE, replace=False)
        return cls(
            edges=[float(e) for e in edges],
            probs=[float(c) for c in counts / counts.sum()],
            sample=[float(v) for v in np.sort(sample)],
            n=int(vals.size),
            mean=float(vals.mean()),
            std=float(vals.std()),
            quantiles={f"p{round(q * 100):02d}": float(np.quantile(vals, q)) for q in _QUANTILES},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges,
            "probs": self.probs,
            "sample": self.sample,
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "quantiles": self.quantiles,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NumericProfile:
        return cls(
            edges=[float(e) for e in data["edges"]],
            probs=[float(p) for p in data["probs"]],
            sample=[float(v) for v in data["sample"]],
            n=int(data["n"]),
            mean=float(data["mean"]),
            std=float(data["std"]),
            quantiles=dict(data.get("quantiles") or {}),
        )


@dataclass
class EmbeddingProfile:
    """Mean and per-dimension std of the penultimate-layer embedding over the reference images."""

    source: str
    """Graph output it was read from: ``embedding`` or ``cam`` (spatial mean per label)."""
    mean: list[float]
    std: list[float]
    n: int

    @property
    def dim(self) -> int:
        return len(self.mean)


@dataclass
class Reference:
    """A model version's reference profile (``reference.json``)."""

    model: dict[str, Any]
    """arch, task, labels, run_id, dataset_version of the model it describes."""
    numeric: dict[str, NumericProfile]
    groups: dict[str, str]
    """Feature -> ``input`` or ``output``."""
    embedding: EmbeddingProfile | None = None
    categorical: dict[str, dict[str, float]] = field(default_factory=dict)
    """e.g. ``{"view": {"frontal": 0.8, "lateral": 0.2}}`` over the values known in the reference."""
    source: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    format: int = REFERENCE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        emb = self.embedding
        return {
            "format": self.format,
            "created_at": self.created_at,
            "model": self.model,
            "source": self.source,
            "features": {
                name: {"group": self.groups.get(name, "input"), **prof.to_dict()} for name, prof in self.numeric.items()
            },
            "categorical": self.categorical,
            "embedding": None
            if emb is None
            else {"source": emb.source, "dim": emb.dim, "n": emb.n, "mean": emb.mean, "std": emb.std},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<reference>") -> Reference:
        try:
            if int(data.get("format", 0)) > REFERENCE_FORMAT:
                raise DataError(
                    f"reference format {data['format']} is newer than this radflow reads ({REFERENCE_FORMAT}).",
                    path=source,
                )
            features = data["features"]
            emb = data.get("embedding")
            return cls(
                model=dict(data["model"]),
                numeric={k: NumericProfile.from_dict(v) for k, v in features.items()},
                groups={k: str(v.get("group", "input")) for k, v in features.items()},
                embedding=None
                if not emb
                else EmbeddingProfile(
                    str(emb["source"]), [float(x) for x in emb["mean"]], [float(x) for x in emb["std"]], int(emb["n"])
                ),
                categorical={
                    k: {str(a): float(b) for a, b in v.items()} for k, v in (data.get("categorical") or {}).items()
                },
                source=dict(data.get("source") or {}),
                created_at=str(data.get("created_at", "")),
                format=int(data.get("format", REFERENCE_FORMAT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a radflow reference profile ({type(exc).__name__}: {exc}).", path=source) from None

    def save(self, path: Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read the reference profile ({exc}).", path=path) from None
        return cls.from_dict(data, str(path))


def reference_path(onnx_path: Path | str) -> Path:
    """Where the reference of an exported model lives: ``reference.json`` in the ONNX file's folder."""
    return Path(onnx_path).parent / REFERENCE_FILE


def _sample_rows(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def _model_outputs(
    model: RadflowModel, pixels: np.ndarray, sex: np.ndarray | None, features: list[str], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """(``features`` values ``(N, F)``, embeddings ``(N, D)`` or None, embedding source) through ONNX Runtime.

    Feature values are taken batch by batch, so probability maps are never held for the whole sample.
    """
    from radflow.data.preprocess import to_model_input
    from radflow.runtime.metadata import IMAGE_INPUT, SEX_INPUT

    source = embedding_source([o.name for o in model.session.get_outputs()])
    names = [model.meta.output, *([source] if source else [])]
    scores, embs = [], []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        feeds = {IMAGE_INPUT: to_model_input(chunk, model.spec)}
        if model.needs_sex:
            feeds[SEX_INPUT] = (
                sex[start : start + batch_size] if sex is not None else np.full((len(chunk), 1), 0.5, np.float32)
            )
        outs = model.session.run(names, feeds)
        scores.append(output_feature_values(outs[0], model.labels, features))
        if source:
            embs.append(embeddings_from(outs[1], source))
    return np.concatenate(scores), (np.concatenate(embs) if embs else None), source


def compute_reference(
    onnx_path: Path | str,
    dataset_path: Path | str,
    *,
    n_train: int = 256,
    n_val: int = 256,
    seed: int = 0,
) -> Reference:
    """The reference profile of an exported model on its dataset (see the module docstring)."""
    from radflow.data.dataset import Dataset
    from radflow.runtime.metadata import sex_feature
    from radflow.runtime.session import RadflowModel, to_model_size

    model = RadflowModel.load(onnx_path, threads=None)
    ds = Dataset.open(dataset_path)
    split = ds.is_split
    train_rows = ds.indices("train") if split else ds.indices("all")
    val_rows = ds.indices("val") if split else ds.indices("all")
    if len(train_rows) == 0:
        train_rows = ds.indices("all")
    if len(val_rows) == 0:
        val_rows = train_rows
    train_rows = _sample_rows(train_rows, n_train, seed)
    val_rows = _sample_rows(val_rows, n_val, seed + 1)
    size = model.spec.size
    train_pixels = to_model_size(ds.images(train_rows), size)
    inputs = np.stack([input_summary(p) for p in train_pixels])
    numeric = {name: NumericProfile.from_values(inputs[:, i], seed) for i, name in enumerate(INPUT_FEATURES)}
    groups = dict.fromkeys(INPUT_FEATURES, "input")

    val_pixels = to_model_size(ds.images(val_rows), size)
    sex = sex_feature(ds.manifest["sex"].to_numpy()[val_rows]) if model.needs_sex else None
    features = output_features(model.labels, model.task)
    scores, embs, source = _model_outputs(model, val_pixels, sex, features)
    for i, name in enumerate(features):
        if not np.isfinite(scores[:, i]).any():
            # e.g. the confidence of a structure no val image is predicted to show: nothing to compare with.
            log.warning(
                "reference of %s: output feature %r is undefined on every val image; not profiled", onnx_path, name
            )
            continue
        numeric[name] = NumericProfile.from_values(scores[:, i], seed)
        groups[name] = "output"
    embedding = None
    if embs is not None and source is not None:
        embedding = EmbeddingProfile(
            source, [float(x) for x in embs.mean(axis=0)], [float(x) for x in embs.std(axis=0)], len(embs)
        )
    views = ds.manifest["view"].to_numpy()[train_rows].astype(str)
    known = views[views != ""]
    categorical = {}
    if known.size:
        values, counts = np.unique(known, return_counts=True)
        categorical["view"] = {str(v): float(c / known.size) for v, c in zip(values, counts, strict=True)}
    return Reference(
        model={
            "arch": model.meta.arch,
            "task": model.task,
            "labels": model.labels,
            "run_id": model.meta.run_id,
            "dataset_version": ds.version,
        },
        numeric=numeric,
        groups=groups,
        embedding=embedding,
        categorical=categorical,
        source={
            "dataset_version": ds.version,
            "input_split": "train" if split else "all",
            "input_images": len(train_rows),
            "output_split": "val" if split else "all",
            "output_images": len(val_rows),
        },
    )


def write_reference(onnx_path: Path | str, dataset_path: Path | str, **kwargs: Any) -> Path:
    """Compute the reference of ``onnx_path`` on ``dataset_path`` and save it beside the ONNX file."""
    return compute_reference(onnx_path, dataset_path, **kwargs).save(reference_path(onnx_path))


def load_reference(onnx_path: Path | str, labels: list[str]) -> tuple[Reference | None, str | None]:
    """(reference, None) for the model at ``onnx_path``, or (None, why there is none) — never raises.

    A reference written for other labels (e.g. a stale file in a reused folder) is refused.
    """
    path = reference_path(onnx_path)
    if not path.is_file():
        return None, f"no {REFERENCE_FILE} beside {Path(onnx_path).name}; re-export the model to compute one."
    try:
        ref = Reference.load(path)
    except DataError as exc:
        return None, str(exc)
    if list(ref.model.get("labels") or []) != list(labels):
        return None, f"{path} describes labels {ref.model.get('labels')}, not this model's {labels}."
    return ref, None


def fetch_reference(onnx_path: Path | str, run_ids: list[str], tracking_uri: str | None = None) -> bool:
    """Download the reference logged to one of ``run_ids`` beside ``onnx_path``; True when one was found.

    A model loaded from MLflow arrives as a single downloaded ONNX file; its reference is a sibling
    artifact of the same run (tag :data:`REFERENCE_TAG`), fetched here. Failures are logged, not raised:
    a model without a reference is still served, only not monitored for drift.
    """
    import shutil
    import tempfile

    from radflow.tracking import client as make_client
    from radflow.tracking import resolve_tracking_uri

    try:
        client = make_client(resolve_tracking_uri(tracking_uri))
        for run_id in dict.fromkeys(r for r in run_ids if r):
            artifact = client.get_run(run_id).data.tags.get(REFERENCE_TAG)
            if not artifact:
                continue
            with tempfile.TemporaryDirectory(prefix="radflow-ref-") as tmp:
                got = Path(client.download_artifacts(run_id, artifact, tmp))
                target = reference_path(onnx_path)
                shutil.copyfile(got, target.with_name(target.name + ".tmp"))
                os.replace(target.with_name(target.name + ".tmp"), target)
            return True
    except Exception:  # MLflow raises many types; monitoring must never stop a model from loading
        log.warning("could not fetch the reference profile of %s from runs %s", onnx_path, run_ids, exc_info=True)
    return False
