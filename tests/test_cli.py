from __future__ import annotations

import typer
from typer.testing import CliRunner

from radflow.cli import app


def _command_paths(typer_app: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [(*prefix, c.name or c.callback.__name__) for c in typer_app.registered_commands if c.callback]
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        paths += _command_paths(group.typer_instance, (*prefix, group.name or ""))
    return paths


def test_every_command_has_help() -> None:
    runner = CliRunner()
    paths = _command_paths(app)
    assert ("ingest",) in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("radflow ")
