"""Server settings: one pydantic class, read from ``RADFLOW_…`` environment variables over the defaults.

``radflow serve`` flags override the environment; tests build :class:`ServeSettings` directly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
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

    @field_validator("allowed_content_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in _FORMAT_OF]
        if unknown:
            raise ValueError(f"unknown content types {unknown}; choose from {sorted(_FORMAT_OF)}.")
        return value

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
