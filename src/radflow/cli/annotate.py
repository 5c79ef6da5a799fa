"""``radflow annotate push|pull|server``: experts label in Label Studio, their labels come back as feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radflow.cli._app import app, console, emit, run_command

__all__ = ["annotate_app"]

annotate_app = typer.Typer(
    help="Label Studio: send images worth labelling with radflow's answers as pre-annotations, pull the labels "
    "back as feedback (then `radflow loop`), or start a local Label Studio.",
    no_args_is_help=True,
)
app.add_typer(annotate_app, name="annotate")

Url = Annotated[str, typer.Option("--url", envvar="RADFLOW_LABEL_STUDIO_URL", help="Label Studio's URL.")]
Token = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="RADFLOW_LABEL_STUDIO_TOKEN",
        help="Label Studio API token (legacy token; Account & Settings in Label Studio).",
        show_default=False,
    ),
]
Workspace = Annotated[Path | None, typer.Option(help="Workspace (default: the one holding the current folder).")]
Project = Annotated[str | None, typer.Option(help="Label Studio project title (default: 'radflow <model name>').")]
Model = Annotated[
    str | None, typer.Option(help="Model whose answers pre-annotate (default: the workspace's champion).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


def _push_render(info: dict[str, Any]) -> None:
    project = info["project"]
    made = "created" if project["created"] else "existing"
    console.print(
        f"[bold]{info['sent']} tasks[/] sent to {info['server']} project {project['id']} ({project['title']!r}, "
        f"{made}) by {info['strategy']} from {info['candidates']} candidates of {info['pool']}; pre-annotated by "
        f"{info['model']['name']}/{info['model']['version']} ({info['task']})",
        highlight=False,
    )
    console.print(
        f"left out: {info['held_out_skipped']} val/test images, {info['already_sent']} sent before", highlight=False
    )
    if info["ml_backend"]:
        console.print(f"ML backend connected: {info['ml_backend']['url']}", highlight=False)


@annotate_app.command("push")
def push_command(
    pool: Annotated[Path, typer.Argument(help="radflow dataset (`radflow ingest` output) to choose images from.")],
    url: Url = "http://127.0.0.1:8080",
    token: Token = "",
    workspace: Workspace = None,
    project: Project = None,
    strategy: Annotated[
        str, typer.Option(help="uncertainty, entropy, disagreement (needs --challenger), drift or random.")
    ] = "uncertainty",
    n: Annotated[int, typer.Option("--n", help="Images to add to the project (never one sent before).")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of --strategy random.")] = 0,
    model: Model = None,
    challenger: Annotated[str | None, typer.Option(help="Second model, for --strategy disagreement.")] = None,
    ml_backend: Annotated[
        str | None,
        typer.Option(help="Connect this radflow ML backend to the project (e.g. http://127.0.0.1:8000/label-studio/)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Send the N images the strategy ranks first, each with the model's answer as a pre-annotation."""
    from radflow.annotate.push import push
    from radflow.pipeline.workspace import find_workspace

    def body() -> dict[str, Any]:
        return push(
            find_workspace(workspace),
            pool=pool,
            url=url,
            token=token,
            project=project,
            strategy=strategy,
            n=n,
            seed=seed,
            model=model,
            challenger=challenger,
            ml_backend=ml_backend,
        )

    emit(run_command(body), as_json, _push_render)


def _pull_render(info: dict[str, Any]) -> None:
    console.print(
        f"[bold]{info['imported']} annotated tasks[/] imported as feedback from project {info['project']['id']} "
        f"({info['annotated_tasks']} annotated, {info['already_imported']} already in the store, "
        f"{info['several_annotations']} by several annotators)",
        highlight=False,
    )
    for entry in info["refused"]:
        console.print(f"[yellow]refused[/] task {entry['task']}: {entry['reason']}", highlight=False)
    if info["agreement"]:
        console.print(f"agreement: {info['agreement']}", highlight=False)
        console.print(f"resolved by: {info['resolution']}", highlight=False)
    loop = info.get("loop")
    if loop:
        reg = loop.get("registration") or {}
        console.print(
            f"[bold]loop[/] data version {loop['data_version']['md5'][:12]}, +{loop['rows_added']} training rows; "
            f"new version {reg.get('version')} {'@challenger' if reg.get('passed') else 'failed its gates'}"
            if loop["new_version"]
            else "[bold]loop[/] no new model version",
            highlight=False,
        )
    else:
        console.print("next: `radflow loop` retrains on them (held-out images are screened out)", highlight=False)


@annotate_app.command("pull")
def pull_command(
    url: Url = "http://127.0.0.1:8080",
    token: Token = "",
    workspace: Workspace = None,
    project: Project = None,
    model: Model = None,
    loop: Annotated[
        bool, typer.Option("--loop", help="Then run `radflow loop`: new data version, gated model.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Import completed annotations as feedback on the pushed predictions (exit 1 when any was refused)."""
    from radflow.annotate.pull import pull
    from radflow.pipeline.workspace import find_workspace

    def body() -> dict[str, Any]:
        root = find_workspace(workspace)
        info = pull(root, url=url, token=token, project=project, model=model)
        if loop:
            from radflow.loop import run_loop

            info["loop"] = run_loop(root)
        return info

    info = run_command(body)
    emit(info, as_json, _pull_render)
    if info["refused"]:
        raise typer.Exit(1)


@annotate_app.command("server")
def server_command(
    data_dir: Annotated[Path, typer.Option(help="Label Studio's database and media.")] = Path("label-studio-data"),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (loopback unless you mean to share it).")
    ] = "127.0.0.1",
    username: Annotated[
        str, typer.Option(help="The user made at first start (an e-mail address).")
    ] = "admin@radflow.local",
    password: Annotated[
        str, typer.Option(envvar="RADFLOW_LABEL_STUDIO_PASSWORD", help="Its password.", show_default=False)
    ] = "",
    token: Token = "",
) -> None:
    """Start Label Studio from its own virtual environment (.venv-label-studio), offline, until Ctrl-C."""
    from radflow.annotate.server import start_label_studio
    from radflow.errors import ConfigError

    def body() -> Any:
        if not password or not token:
            raise ConfigError(
                "give the user's --password (RADFLOW_LABEL_STUDIO_PASSWORD) and API --token "
                "(RADFLOW_LABEL_STUDIO_TOKEN, more than 5 characters): radflow calls Label Studio with it."
            )
        return start_label_studio(data_dir, port=port, host=host, username=username, password=password, token=token)

    server = run_command(body)
    console.print(
        f"[bold]Label Studio[/] {server.url} (user {username}; data {server.data_dir}; log {server.log}; "
        f"up in {server.started_s:.1f} s). Ctrl-C stops it.",
        highlight=False,
    )
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
