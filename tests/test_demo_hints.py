"""The demo's closing hints follow the state it left: no ``@champion`` or ``serve`` hint without a champion."""

from __future__ import annotations

from pathlib import Path

import pytest

from radflow.demo import DemoResult, next_steps

_RUN = {"ran": [], "skipped": [], "seconds": 1.0, "metrics": {}, "registration": {}}


def _result(tmp_path: Path, registration: dict[str, object], promotion: dict[str, object]) -> DemoResult:
    return DemoResult(workdir=tmp_path, run=_RUN, registration=registration, promotion=promotion)


def test_a_promoted_demo_suggests_the_champion_and_serving(tmp_path: Path) -> None:
    reg = {"name": "chest-xray", "version": "1", "passed": True}
    lines = "\n".join(next_steps(_result(tmp_path, reg, {"name": "chest-xray", "version": "1"})))
    assert f"radflow lineage models:/chest-xray@champion --workspace {tmp_path}" in lines
    assert f"radflow serve --workspace {tmp_path}" in lines


def test_a_demo_that_failed_its_gates_suggests_no_champion(tmp_path: Path) -> None:
    reg = {"name": "chest-xray", "version": "3", "passed": False, "failures": ["test_macro_auroc 0.61 < 0.7"]}
    lines = "\n".join(next_steps(_result(tmp_path, reg, {})))
    assert "@champion" not in lines and "radflow serve" not in lines
    assert "radflow lineage models:/chest-xray/3" in lines
    assert "radflow promote chest-xray 3 --force" in lines


def test_the_rendered_demo_ends_with_the_hints_of_its_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from radflow.cli.demo import _render

    reg = {"name": "chest-xray", "version": "2", "passed": False, "failures": []}
    result = _result(tmp_path, reg, {})
    _render(DemoResult(workdir=tmp_path, run={**_RUN, "registration": reg}, registration=reg))
    err = capsys.readouterr().err
    assert "not promoted" in err and "@champion" not in err and "radflow serve" not in err
    assert result.to_dict()["next_steps"] == next_steps(result)
