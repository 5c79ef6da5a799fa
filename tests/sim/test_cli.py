"""The simulate and loadtest commands' clear errors (no server needed)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from radflow.cli import app
from tests.fixtures import make_dataset
from tests.serve.server import free_port


def _text(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines at the terminal width


def test_simulate_cli_refuses_an_unknown_drift_before_sending(tmp_path: Path) -> None:
    args = ["simulate", "http://127.0.0.1:9", "--data", str(tmp_path), "--drift", "brightness=0.2,gama=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown drift parameter 'gama'; choose from brightness, contrast, noise, blur" in " ".join(
        result.output.split()
    )


def test_simulate_and_loadtest_say_when_no_server_answers(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=30)
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["simulate", url, "--data", str(ds)], ["loadtest", url, "--out", str(tmp_path / "lt")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"cannot reach a radflow server at {url}" in _text(result.output)


def test_simulate_names_an_empty_split_and_the_one_to_use(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=12)  # 4 patients: none lands in test
    args = ["simulate", f"http://127.0.0.1:{free_port()}", "--data", str(ds), "--split", "test"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "the 'test' split is empty. Try --split val." in _text(result.output)
