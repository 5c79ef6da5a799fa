"""What the registry holds: every registered model, its versions, aliases and gate verdicts (read only)."""

from __future__ import annotations

from typing import Any

from radflow.modelref import registered_model
from radflow.registry.client import open_client
from radflow.registry.registration import GATE_TAG, HEADLINE_METRICS

__all__ = ["list_models"]


def _version_key(version: dict[str, Any]) -> int:
    return int(version["version"]) if str(version["version"]).isdigit() else 0


def _quoted(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def list_models(tracking_uri: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Registered models (only ``name`` when given) with their versions, newest first.

    Returns ``{"tracking_uri", "models": [{"name", "aliases": {alias: version}, "versions": [{"version",
    "run_id", "aliases", "gate", "gate_failures", "created_at", "metrics"}]}]}``; ``gate`` is
    ``passed``/``failed`` as registration tagged it, or ``None`` for a version registered otherwise.
    An unknown ``name`` is a NotFoundError listing the registered ones.
    """
    client, uri = open_client(tracking_uri)
    models = [registered_model(client, name, uri)] if name else list(client.search_registered_models())
    out: list[dict[str, Any]] = []
    for model in sorted(models, key=lambda m: m.name):
        aliases = {alias: str(version) for alias, version in sorted((model.aliases or {}).items())}
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        versions = []
        for mv in client.search_model_versions(f"name={_quoted(model.name)}"):
            tags = dict(mv.tags or {})
            versions.append(
                {
                    "version": str(mv.version),
                    "run_id": mv.run_id,
                    "aliases": by_version.get(str(mv.version), []),
                    "gate": tags.get(GATE_TAG),
                    "gate_failures": tags.get("gate_failures"),
                    "created_at": mv.creation_timestamp,
                    "metrics": {key: float(tags[key]) for key in HEADLINE_METRICS if key in tags},
                }
            )
        versions.sort(key=_version_key, reverse=True)
        out.append({"name": model.name, "aliases": aliases, "versions": versions})
    return {"tracking_uri": uri, "models": out}
