"""``radflow demo --no-serve``: a workspace from nothing to a promoted champion, at a tiny size."""

from __future__ import annotations

import pytest

from tests.pipeline.tiny import TinyDemo, tiny_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> TinyDemo:
    return tiny_demo(tmp_path_factory.getbasetemp())


@pytest.mark.slow
def test_demo_runs_the_workspace_pipeline_and_promotes(demo: TinyDemo) -> None:
    assert demo.exit_code == 0, demo.output
    text = " ".join(demo.output.split())
    for stage in ("synth", "ingest", "split", "train", "evaluate", "export", "register"):
        assert f"Running stage '{stage}'" in text
    assert "AUROC" in text  # the evaluation table
    assert "promoted to models:/chest-xray@champion (version 1)" in text
    assert "radflow serve --workspace" in text and "next:" not in text  # --no-serve: says how, serves nothing
    assert demo.registration["name"] == "chest-xray" and demo.registration["passed"] is True
    assert (demo.workdir / "models" / "export" / "model.onnx").stat().st_size > 0
