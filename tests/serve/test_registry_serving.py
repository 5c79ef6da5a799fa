"""A workspace's registry champion is served; admin promote and rollback move the alias and swap the model."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from radflow.inference import ServeSettings
from radflow.registry import promote
from radflow.runtime import ONNX_TAG
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes

TOKEN = {"Authorization": "Bearer adm"}


def _registry(workspace: Path, models: tuple[Path, Path]) -> str:
    from radflow.tracking import client as make_client

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    client = make_client(uri, create=True)
    experiment = client.create_experiment("serve", artifact_location=str(workspace / "mlartifacts"))
    client.create_registered_model("chest-xray")
    for path in models:
        run_id = client.create_run(experiment).info.run_id
        client.log_artifact(run_id, str(path), "onnx")
        client.set_tag(run_id, ONNX_TAG, f"onnx/{path.name}")
        client.set_terminated(run_id)
        client.create_model_version("chest-xray", f"runs:/{run_id}/onnx", run_id=run_id)
    promote("chest-xray", "1", uri)
    return uri


def test_promote_and_rollback_swap_the_served_champion(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    _registry(tmp_path, onnx_pair)
    app = AppHarness(ServeSettings(workspace=tmp_path, admin_token=SecretStr("adm")))
    try:
        first = app.request("POST", "/v1/predict", content=png_bytes(0)).json()
        assert first["model"] == {"name": "chest-xray", "version": "1", "alias": "champion"}
        assert app.request("GET", "/v2/models/chest-xray/versions/1/ready").status_code == 200

        promoted = app.request("POST", "/admin/promote", json={"version": "2"}, headers=TOKEN)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["routing"]["champion"]["version"] == "2"
        second = app.request("POST", "/v1/predict", content=png_bytes(0)).json()
        assert second["model"]["version"] == "2" and second["findings"] != first["findings"]

        rolled = app.request("POST", "/admin/rollback", headers=TOKEN)
        assert rolled.status_code == 200 and rolled.json()["registry"]["version"] == "1"
        assert app.request("POST", "/v1/predict", content=png_bytes(0)).json()["findings"] == first["findings"]
        again = app.request("POST", "/admin/rollback", headers=TOKEN)
        assert again.status_code == 400 and "nothing to roll back" in again.json()["error"]
        missing = app.request("POST", "/admin/promote", json={"version": "9"}, headers=TOKEN)
        assert missing.status_code == 404, missing.text
        assert (tmp_path / "serving.db").is_file()
    finally:
        app.close()
