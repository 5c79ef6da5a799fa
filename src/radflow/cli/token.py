"""``radflow token create|list|revoke`` and ``radflow audit``: API tokens of a server and its audit log.

Tokens and the audit log live in the server's prediction store (serving.db of the workspace, or
``--store-url``), so these commands work on a running server's store: a new token is accepted at
once, a revoked one within a few seconds.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, run_command

if TYPE_CHECKING:
    from radflow.store import Store

__all__ = ["audit_command", "create_command", "list_command", "revoke_command", "token_app"]

token_app = typer.Typer(help="API tokens of `radflow serve` (roles: client, reader, operator).", no_args_is_help=True)
app.add_typer(token_app, name="token")

WorkspaceOpt = Annotated[
    Path | None, typer.Option("--workspace", "-w", help="Workspace whose serving.db holds the tokens.")
]
StoreOpt = Annotated[
    str | None, typer.Option("--store-url", help="SQLAlchemy URL of the server's store (default: the workspace's).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _open(workspace: Path | None, store_url: str | None, create: bool = False) -> Store:
    from radflow.errors import ConfigError
    from radflow.inference import ServeSettings
    from radflow.store import Store

    if workspace is None and store_url is None:
        raise ConfigError("say which server's store: --workspace DIR or --store-url URL.")
    if workspace is not None and not workspace.is_dir():
        raise ConfigError(f"--workspace {workspace} is not a folder.")
    overrides: dict[str, Any] = {"workspace": workspace, "store_url": store_url}
    settings = ServeSettings(**{k: v for k, v in overrides.items() if v is not None})
    return Store(settings.resolved_store_url(), create=create)


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli"


@token_app.command("create")
def create_command(
    role: Annotated[str, typer.Option("--role", help="client (predict), reader (+ view, feedback), operator (all).")],
    name: Annotated[str, typer.Option("--name", help="Who or what uses the token (shown in the audit log).")],
    workspace: WorkspaceOpt = None,
    store_url: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print it once: only a salted digest is kept, so it cannot be shown again."""
    from radflow.auth import create_token
    from radflow.store import append_audit

    def body() -> dict[str, Any]:
        with _open(workspace, store_url, create=True) as store:
            token, record = create_token(store, name, role)
            append_audit(
                store,
                _operator(),
                "token.create",
                via="cli",
                resource=f"token:{record['id']}",
                detail={"name": record["name"], "role": record["role"]},
            )
        return {**record, "token": token}

    result = run_command(body)

    def render(r: dict[str, Any]) -> None:
        console.print(f"token {r['id']} for {r['name']} (role {r['role']}); it is shown only now:", highlight=False)
        typer.echo(r["token"])
        console.print("send it as 'Authorization: Bearer <token>' (the web UI asks for it once per tab)")

    emit(result, as_json, render)


@token_app.command("list")
def list_command(
    workspace: WorkspaceOpt = None,
    store_url: StoreOpt = None,
    show_all: Annotated[bool, typer.Option("--all", help="Also list revoked tokens.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The tokens of a server (ids, names, roles, dates; never the tokens themselves)."""
    from radflow.store import list_tokens

    def body() -> list[dict[str, Any]]:
        with _open(workspace, store_url) as store:
            return list_tokens(store, include_revoked=show_all)

    rows = run_command(body)

    def render(found: list[dict[str, Any]]) -> None:
        table = Table("id", "name", "role", "created", "revoked", title="API tokens")
        for r in found:
            table.add_row(r["id"], r["name"], r["role"], r["created_at"], r["revoked_at"] or "")
        console.print(table)

    emit(rows, as_json, render)


@token_app.command("revoke")
def revoke_command(
    id_or_name: Annotated[str, typer.Argument(help="Token id, or a name (revokes all of that name's tokens).")],
    workspace: WorkspaceOpt = None,
    store_url: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke tokens; a running server refuses them within a few seconds."""
    from radflow.errors import NotFoundError
    from radflow.store import append_audit, revoke_tokens

    def body() -> list[dict[str, Any]]:
        with _open(workspace, store_url) as store:
            revoked = revoke_tokens(store, id_or_name)
            if not revoked:
                raise NotFoundError(f"no active token with id or name {id_or_name!r}; see `radflow token list`.")
            for r in revoked:
                append_audit(
                    store,
                    _operator(),
                    "token.revoke",
                    via="cli",
                    resource=f"token:{r['id']}",
                    detail={"name": r["name"]},
                )
            return revoked

    rows = run_command(body)
    emit(rows, as_json, lambda found: console.print("revoked " + ", ".join(f"{r['id']} ({r['name']})" for r in found)))


@app.command("audit")
def audit_command(
    workspace: WorkspaceOpt = None,
    store_url: StoreOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest events to show.")] = 50,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this caller (token name, OIDC user).")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action (view_image, admin.promote...).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The server's audit log, newest first: who viewed or changed what, and the answer they got."""
    from radflow.store import audit_events

    def body() -> list[dict[str, Any]]:
        with _open(workspace, store_url) as store:
            return audit_events(store, limit=limit, actor=actor, action=action)

    rows = run_command(body)

    def render(found: list[dict[str, Any]]) -> None:
        table = Table("time", "who", "role", "action", "resource", "status", title="audit log")
        for r in found:
            who = r["actor"] + ("" if r["via"] in ("token", "cli") else f" ({r['via']})")
            table.add_row(
                r["created_at"], who, r["role"] or "", r["action"], r["resource"] or "", str(r["status"] or "")
            )
        console.print(table)

    emit(rows, as_json, render)
