"""The MLflow client the registry operations share, and the version an alias points at."""

from __future__ import annotations

from typing import TYPE_CHECKING

from radflow.modelref import registered_model

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = ["alias_version", "open_client"]


def open_client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """A client for the resolved tracking URI, and that URI (error messages name the store)."""
    from radflow.tracking import client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return client(uri), uri


def alias_version(client: MlflowClient, name: str, alias: str, uri: str) -> ModelVersion | None:
    """The version holding ``alias`` of ``name`` (which must exist), or ``None`` when none holds it."""
    aliases = dict(registered_model(client, name, uri).aliases or {})
    if alias not in aliases:
        return None
    return client.get_model_version(name, str(aliases[alias]))
