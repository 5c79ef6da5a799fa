"""The store's access-control records: token rows and the append-only audit log (SQLite triggers)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

import radflow.store.access as access
from radflow.store import (
    Store,
    add_token,
    append_audit,
    audit_events,
    get_token,
    list_tokens,
    revoke_tokens,
)

FIXTURE = Path(__file__).parent / "fixtures" / "serving-v0.db"


def _tamper(store: Store) -> list[str]:
    """Try every way to rewrite history; the database's error messages, one per attempt."""
    refused = []
    for statement in ("UPDATE audit_log SET actor = 'someone-else'", "DELETE FROM audit_log"):
        try:
            with store.engine.begin() as conn:
                conn.execute(text(statement))
        except DatabaseError as exc:
            refused.append(str(exc.orig))
    return refused


@pytest.mark.parametrize("origin", ["new", "migrated from v0"])
def test_the_audit_log_refuses_update_and_delete(origin: str, tmp_path: Path) -> None:
    path = tmp_path / "serving.db"
    if origin != "new":
        shutil.copy(FIXTURE, path)
    with Store(f"sqlite:///{path}") as store:
        append_audit(store, "reader-1", "view_image", via="token", role="reader", resource="prediction:p1", status=200)
        assert _tamper(store) == ["the audit log is append-only"] * 2
        (event,) = audit_events(store)
        assert (event["actor"], event["action"], event["resource"], event["status"]) == (
            "reader-1",
            "view_image",
            "prediction:p1",
            200,
        )
    # Also outside radflow, from any SQL shell.
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_log")


def test_the_store_api_can_only_append_and_read_the_audit_log() -> None:
    audit_functions = {name for name in access.__all__ if "audit" in name}
    assert audit_functions == {"append_audit", "audit_events"}


def test_audit_events_filter_by_actor_and_action_newest_first(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'serving.db'}") as store:
        for actor, action in (("a", "view_image"), ("b", "feedback"), ("a", "feedback")):
            append_audit(store, actor, action, via="token", detail={"n": 1})
        assert [(e["actor"], e["action"]) for e in audit_events(store)] == [
            ("a", "feedback"),
            ("b", "feedback"),
            ("a", "view_image"),
        ]
        assert [e["action"] for e in audit_events(store, actor="a")] == ["feedback", "view_image"]
        assert [e["actor"] for e in audit_events(store, action="feedback", limit=1)] == ["a"]
        assert audit_events(store)[0]["detail"] == {"n": 1}


def test_tokens_are_listed_without_digests_and_revoked_by_id_or_name(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'serving.db'}") as store:
        for token_id, name in (("aaaaaaaaaaaa", "alice"), ("bbbbbbbbbbbb", "pacs"), ("cccccccccccc", "pacs")):
            add_token(store, token_id=token_id, name=name, role="client", salt="00" * 16, digest="ff" * 32)
        assert "digest" in (get_token(store, "aaaaaaaaaaaa") or {})
        assert get_token(store, "nope") is None
        assert all("digest" not in t and "salt" not in t for t in list_tokens(store))
        assert [t["id"] for t in revoke_tokens(store, "pacs")] == ["bbbbbbbbbbbb", "cccccccccccc"]
        assert [t["id"] for t in revoke_tokens(store, "aaaaaaaaaaaa")] == ["aaaaaaaaaaaa"]
        assert revoke_tokens(store, "alice") == []
        assert list_tokens(store) == []
        revoked = list_tokens(store, include_revoked=True)
        assert len(revoked) == 3 and all(t["revoked_at"] for t in revoked)
