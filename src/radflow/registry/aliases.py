"""Champion and challenger: promote, and rollback through the stack of previous champions.

:func:`promote` moves ``champion`` and pushes the previous champion onto a stack kept in the
registered-model tag ``radflow.previous_champion``; :func:`rollback` pops it, so repeated
rollbacks walk back through earlier champions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from radflow.errors import RadflowError
from radflow.modelref import CHALLENGER, CHAMPION, get_version, registered_model
from radflow.registry.client import open_client
from radflow.registry.registration import GATE_TAG

__all__ = ["PREVIOUS_CHAMPION_TAG", "promote", "rollback"]

PREVIOUS_CHAMPION_TAG = "radflow.previous_champion"


def _history(model: Any) -> list[str]:
    raw = (model.tags or {}).get(PREVIOUS_CHAMPION_TAG, "")
    try:
        value = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        value = [v for v in raw.split(",") if v]
    return [str(v) for v in value]


def promote(name: str, version: str | int, tracking_uri: str | None = None, *, force: bool = False) -> dict[str, Any]:
    """Make ``version`` the champion; the previous champion is pushed onto the rollback stack.

    A version that failed its gates is refused unless ``force``. Promoting the current champion
    changes nothing. Promoting the challenger also removes its ``challenger`` alias.
    """
    client, uri = open_client(tracking_uri)
    target = get_version(client, name, version, uri)
    number = str(target.version)
    if (target.tags or {}).get(GATE_TAG) == "failed" and not force:
        reasons = (target.tags or {}).get("gate_failures", "see the version's tags")
        raise RadflowError(
            f"{name} version {number} failed its quality gates ({reasons}); pass --force to promote it anyway."
        )
    model = registered_model(client, name, uri)
    aliases = dict(model.aliases or {})
    previous = str(aliases[CHAMPION]) if CHAMPION in aliases else None
    history = _history(model)
    changed = previous != number
    if changed:
        if previous is not None:
            history.append(previous)
            client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, json.dumps(history))
        client.set_registered_model_alias(name, CHAMPION, number)
        client.set_model_version_tag(
            name, number, "radflow.promoted_at", datetime.now(UTC).isoformat(timespec="seconds")
        )
    if str(aliases.get(CHALLENGER, "")) == number:
        client.delete_registered_model_alias(name, CHALLENGER)
    return {"name": name, "version": number, "previous": previous, "changed": changed, "history": history}


def rollback(name: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Give ``champion`` back to the version that held it before the last promote."""
    from mlflow.exceptions import MlflowException

    client, uri = open_client(tracking_uri)
    model = registered_model(client, name, uri)
    history = _history(model)
    current = (model.aliases or {}).get(CHAMPION)
    while history:
        candidate = history.pop()
        try:
            client.get_model_version(name, candidate)
        except MlflowException:
            continue  # that version was deleted since; fall back to the one before it
        client.set_registered_model_alias(name, CHAMPION, candidate)
        client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, json.dumps(history))
        return {
            "name": name,
            "version": candidate,
            "replaced": None if current is None else str(current),
            "history": history,
        }
    client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, "[]")
    raise RadflowError(
        f"nothing to roll back: {name} has no previous champion"
        + (f" (champion is version {current})" if current is not None else "")
        + ". Rollback restores the champion that a `radflow promote` replaced."
    )
