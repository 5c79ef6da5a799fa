"""Server settings: one pydantic class, read from ``RADFLOW_…`` environment variables over the defaults.

``radflow serve`` flags override the environment; tests build :class:`ServeSettings` directly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from radflow.data.decode import DEFAULT_MAX_PIXELS

__all__ = ["DEFAULT_CONTENT_TYPES", "ServeSettings"]

DEFAULT_CONTENT_TYPES = ["image/png", "image/jpeg", "application/dicom"]
_FORMAT_OF = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "application/dicom": "dicom"}


class ServeSettings(BaseSettings):
    """How ``radflow serve`` runs; every field can be set as ``RADFLOW_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="RADFLOW_", extra="ignore", validate_default=True)

    workspace: Path | None = None
    """Workspace made by ``radflow init``/``radflow demo``: its mlflow.db is the registry, serving.db the store."""
    model: str | None = None
    """Champion model: ONNX path, run id, runs:/ID or models:/NAME@ALIAS (default models:/MODEL_NAME@champion)."""
    challenger: str | None = None
    """Optional challenger model URI for A/B, canary or shadow routing."""
    model_name: str = "chest-xray"
    """Registered model name served by default and used by promote/rollback."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: the workspace's mlflow.db, else MLFLOW_TRACKING_URI, else ./mlflow.db)."""
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Most images run together in one ONNX Runtime call."""
    max_queue_delay_ms: float = Field(default=10.0, ge=0)
    """Longest a request waits for others to fill its batch."""
    max_queue_size: int = Field(default=256, ge=1)
    """Requests waiting for the model beyond this are refused with 503 and Retry-After."""
    request_timeout_s: float = Field(default=30.0, gt=0)
    """A request not answered within this many seconds gets 504."""
    max_body_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above)."""
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Largest image (width x height) decoded; larger uploads get 422 before decompression."""
    allowed_content_types: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES))
    """Image types /v1/predict accepts, checked against the sniffed bytes (not the declared header)."""
    store_url: str | None = None
    """SQLAlchemy URL of the prediction/feedback store (default: sqlite serving.db in the workspace, WAL)."""
    store_inputs: bool = True
    """Keep decoded input pixels (PNG, content-addressed by sha256, beside the db) for heatmaps and relabelling."""
    inputs_dir: Path | None = None
    """Where stored inputs go (default: ``inputs/`` beside a SQLite store, else ./serving-inputs)."""
    admin_token: SecretStr | None = None
    """Bearer token of the admin endpoints (RADFLOW_ADMIN_TOKEN); unset disables them."""
    challenger_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of traffic the challenger answers (canary); 0 = champion only."""
    shadow: bool = False
    """Challenger scores every request in the background; only the champion answers."""
    decode_workers: int = Field(default=2, ge=1)
    """Threads that decode and preprocess uploads off the event loop."""
    exclusive_inference: bool = True
    """ORT batches never run beside a decode (decodes pause): on few cores this keeps ORT's threads at full speed."""
    threads: int | None = None
    """ONNX Runtime intra-op threads per model (default: the available cores)."""
    int8: bool = False
    """Serve the INT8 export of registry models."""
    drift: bool = True
    """Keep a window of live inputs/outputs per model version and score it against the model's reference.json."""
    drift_window: int = Field(default=500, ge=10)
    """Most recent predictions per model version that drift is scored on (a ring buffer)."""
    drift_min_window: int = Field(default=100, ge=10)
    """Predictions needed before drift is scored (PSI of a small window is biased upward)."""
    drift_psi_threshold: float = Field(default=0.2, gt=0)
    """PSI at or above this is drift (0.1-0.2 moderate, above 0.2 major)."""
    drift_ks_threshold: float = Field(default=0.2, gt=0, le=1)
    """Kolmogorov-Smirnov statistic (largest gap between CDFs) at or above this is drift."""
    drift_embedding_threshold: float = Field(default=0.5, gt=0)
    """Embedding mean shift, in reference standard deviations (RMS over dimensions), at or above this is drift."""
    drift_interval_s: float = Field(default=15.0, gt=0)
    """How often drift is scored in the background (gauges, alerts); GET /v1/monitoring also scores it."""
    auto_rule: bool = False
    """Let online evaluation promote or roll back the challenger when the evidence is significant (off by default)."""
    auto_rule_interval_s: float = Field(default=300.0, gt=0)
    """How often the auto rule looks at the online report."""
    auto_rule_min_feedback: int = Field(default=200, ge=1)
    """Feedback-labelled predictions per arm needed before the auto rule may act."""
    auto_rule_metric: str | None = None
    """Metric the auto rule compares (e.g. macro_auroc, mae); default: macro AUROC or MAE by task."""
    auto_rule_margin: float = Field(default=0.0, ge=0)
    """How far the CI of the challenger's gain must clear zero before the auto rule acts."""
    online_window: int = Field(default=1000, ge=10)
    """Most recent feedback-labelled predictions per arm that online evaluation uses."""

    @field_validator("allowed_content_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in _FORMAT_OF]
        if unknown:
            raise ValueError(f"unknown content types {unknown}; choose from {sorted(_FORMAT_OF)}.")
        return value

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> ServeSettings:
        if self.drift_min_window > self.drift_window:
            raise ValueError(
                f"drift_min_window ({self.drift_min_window}) is larger than drift_window ({self.drift_window}); "
                "drift would never be scored."
            )
        return self

    @property
    def allowed_formats(self) -> set[str]:
        """Sniffed formats ("png", "jpeg", "dicom") the allowed content types stand for."""
        return {_FORMAT_OF[t] for t in self.allowed_content_types}

    @property
    def root(self) -> Path:
        return (self.workspace or Path.cwd()).resolve()

    def resolved_model(self) -> str:
        return self.model or f"models:/{self.model_name}@champion"

    def resolved_tracking_uri(self) -> str | None:
        if self.tracking_uri:
            return self.tracking_uri
        if self.workspace is not None:
            return f"sqlite:///{(self.root / 'mlflow.db')}"
        return None

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.root / 'serving.db'}"

    def resolved_inputs_dir(self) -> Path:
        if self.inputs_dir is not None:
            return self.inputs_dir
        url = self.resolved_store_url()
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            return Path(url.removeprefix("sqlite:///")).parent / "inputs"
        return self.root / "serving-inputs"
