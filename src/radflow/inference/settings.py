"""Server settings: one pydantic class, and the one place serving configuration is read.

Precedence, highest first: ``radflow serve`` flags (keyword arguments) > ``RADFLOW_<FIELD>``
environment variables > the workspace's ``params.yaml`` (``registry.name`` is the model name,
``serve:`` holds the :class:`radflow.config.ServeConfig` fields) > the defaults. A misspelt key in
``serve:`` is a :class:`~radflow.errors.ConfigError` naming it, with a suggestion. Tests build
:class:`ServeSettings` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from radflow.config import DEFAULT_CONTENT_TYPES, Params, ServeConfig, load_params
from radflow.modelref import CHAMPION, model_uri

__all__ = ["DEFAULT_CONTENT_TYPES", "ServeSettings", "WorkspaceSettings"]


class _WorkspaceSource(PydanticBaseSettingsSource):
    """What a workspace's params.yaml holds for a :class:`WorkspaceSettings`; below the environment, above the defaults.

    The workspace is the one the higher sources name (flag or ``RADFLOW_WORKSPACE``); without one,
    no params.yaml is read, so ``radflow serve --model FILE`` never picks up the current folder's.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        workspace = self.current_state.get("workspace")
        if workspace is None:
            return {}
        path = Path(workspace) / "params.yaml"
        if not path.is_file():
            return {}
        assert issubclass(self.settings_cls, WorkspaceSettings)
        return self.settings_cls.from_workspace(load_params(path))


class WorkspaceSettings(BaseSettings):
    """Settings of one process read as: keyword arguments (flags) > environment > the named workspace's
    params.yaml (:meth:`from_workspace` picks the section) > defaults. Serving and Kafka settings are these."""

    workspace: Path | None = None

    @classmethod
    def from_workspace(cls, params: Params) -> dict[str, Any]:
        """The values params.yaml gives these settings (only the keys it sets)."""
        raise NotImplementedError

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _WorkspaceSource(settings_cls)


class ServeSettings(ServeConfig, WorkspaceSettings):
    """How ``radflow serve`` runs; every field can be set as ``RADFLOW_<FIELD>`` (upper case).

    The fields of :class:`radflow.config.ServeConfig` can also be set in params.yaml's ``serve:``;
    the ones below belong to one serving process (secrets, URLs, where it runs), not to the workspace.
    """

    model_config = SettingsConfigDict(
        env_prefix="RADFLOW_", extra="ignore", validate_default=True, validate_assignment=False
    )

    workspace: Path | None = None
    """Workspace made by ``radflow init``/``radflow demo``: its mlflow.db is the registry, serving.db the store."""
    model_name: str = "chest-xray"
    """Registered model name served by default and used by promote/rollback."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the workspace's mlflow.db, else ./mlflow.db)."""
    store_url: str | None = None
    """SQLAlchemy URL of the prediction/feedback store (default: sqlite serving.db in the workspace, WAL)."""
    inputs_dir: Path | None = None
    """Where stored inputs go (default: ``inputs/`` beside a SQLite store, else ./serving-inputs)."""
    admin_token: SecretStr | None = None
    """Bearer token of the admin endpoints (RADFLOW_ADMIN_TOKEN); unset disables them."""

    @classmethod
    def from_workspace(cls, params: Params) -> dict[str, Any]:
        values: dict[str, Any] = params.serve.model_dump(exclude_unset=True)
        if "name" in params.registry.model_fields_set:
            values["model_name"] = params.registry.name
        return values

    @property
    def root(self) -> Path:
        return (self.workspace or Path.cwd()).resolve()

    def resolved_model(self) -> str:
        return self.model or model_uri(self.model_name, alias=CHAMPION)

    def resolved_tracking_uri(self) -> str | None:
        if self.tracking_uri:
            return self.tracking_uri
        if self.workspace is not None:
            from radflow.tracking import resolve_tracking_uri

            # MLFLOW_TRACKING_URI (a shared server) > the workspace's mlflow.db, as for every other command
            return resolve_tracking_uri(None, self.root)
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
