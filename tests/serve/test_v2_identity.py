"""What a served model is called: a plain ONNX file by its metadata's name and version ``unregistered``.

A registry version that failed its gates is served with a warning: ``tests/ui/test_registry_panel.py`` (one registry
for that and the dashboard's registry panel)."""

from __future__ import annotations

import shutil
from pathlib import Path

from radflow.export.onnx import read_metadata, write_metadata
from radflow.inference import ServeSettings
from tests.serve.harness import AppHarness, metric_value
from tests.serve.models import png_bytes


def _settings(root: Path, **kw: object) -> ServeSettings:
    return ServeSettings(
        store_url=f"sqlite:///{root / 'serving.db'}",
        inputs_dir=root / "inputs",
        drift_interval_s=3600,
        threads=1,
        **kw,  # type: ignore[arg-type]
    )


def test_a_plain_onnx_file_is_served_by_its_metadata_name_as_unregistered(
    onnx_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    served = tmp_path / "export" / "model.onnx"
    served.parent.mkdir()
    shutil.copy(onnx_pair[0], served)
    meta = read_metadata(served)
    meta.name = "hand-age"
    write_metadata(served, meta)
    app = AppHarness(_settings(tmp_path, model=str(served)))
    try:
        answer = app.request("POST", "/v1/predict", content=png_bytes(0)).json()
        assert (answer["model"]["name"], answer["model"]["version"]) == ("hand-age", "unregistered")
        v2 = app.request("GET", "/v2/models/hand-age")
        assert v2.status_code == 200 and v2.json()["versions"] == ["unregistered"]
        assert "warnings" not in v2.json()["parameters"]  # a file was never gated: its version says so
        assert app.request("GET", "/v2/models/model").status_code == 404
        metrics = app.request("GET", "/metrics").text
        assert metric_value(metrics, "radflow_batch_size_count", model="hand-age", version="unregistered") >= 1
        served_arm = app.request("GET", "/v1/ui/models").json()["routing"]["champion"]
        assert (served_arm["name"], served_arm["version"], served_arm["warnings"]) == ("hand-age", "unregistered", [])
    finally:
        app.close()
