"""``radflow serve`` refuses bad arguments with one clear line (exit 2) before starting a server."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from radflow.cli import app


def test_serve_reports_a_missing_workspace_or_model(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["serve", "--workspace", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "radflow init" in " ".join(missing.output.split())
    bad = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "model.onnx"), "--port", "1"])
    assert bad.exit_code == 2 and "model.onnx' is not a file; give a checkpoint or ONNX file" in " ".join(
        bad.output.split()
    )
