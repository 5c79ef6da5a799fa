"""The dashboard's models panel against a real registry: served versions that failed their quality gates (or were
never gated) are warned about at start, in /v2 metadata and in the panel's data; each registered version links to
its evaluation report, served from the version's run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from radflow.inference import ServeSettings
from radflow.registry import GATE_TAG
from radflow.runtime import ONNX_TAG
from tests.serve.harness import AppHarness

REPORT = b"<!doctype html><html><head><style>h1{color:red}</style></head><body><h1>AUROC 0.91</h1></body></html>"


@dataclass
class Served:
    app: AppHarness
    started: list[str]
    """The WARNING lines logged while the server started."""
    runs: list[str]


@pytest.fixture(scope="module")
def served(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """chest-xray version 1 failed its gates and is the champion (its run has a report); version 2, the
    challenger, carries no verdict and no report."""
    from radflow.registry import promote
    from radflow.tracking import client as make_client

    root = tmp_path_factory.mktemp("registry-panel")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = make_client(uri, create=True)
    experiment = client.create_experiment("serve", artifact_location=str(root / "mlartifacts"))
    client.create_registered_model("chest-xray")
    runs = []
    for path in onnx_pair:
        run_id = client.create_run(experiment).info.run_id
        client.log_artifact(run_id, str(path), "onnx")
        client.set_tag(run_id, ONNX_TAG, f"onnx/{path.name}")
        client.set_terminated(run_id)
        client.create_model_version("chest-xray", f"runs:/{run_id}/onnx", run_id=run_id)
        runs.append(run_id)
    (root / "report.html").write_bytes(REPORT)
    client.log_artifact(runs[0], str(root / "report.html"), "evaluation")
    client.set_model_version_tag("chest-xray", "1", GATE_TAG, "failed")
    client.set_model_version_tag("chest-xray", "1", "gate_failures", "test_auroc_macro 0.51 < 0.70")
    promote("chest-xray", "1", uri, force=True)
    client.set_registered_model_alias("chest-xray", "challenger", "2")

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("radflow.inference.routing")
    logger.addHandler(handler)
    try:
        settings = ServeSettings(
            workspace=root, challenger="models:/chest-xray@challenger", drift_interval_s=3600, threads=1
        )
        app = AppHarness(settings)
    finally:
        logger.removeHandler(handler)
    try:
        yield Served(app, [r.getMessage() for r in records], runs)
    finally:
        app.close()


def test_a_version_that_failed_its_gates_is_warned_about_at_start_in_v2_and_on_the_dashboard(
    served: Served,
) -> None:
    started, app = served.started, served.app
    assert any("chest-xray version 1 FAILED its quality gates" in m and "0.51 < 0.70" in m for m in started), started
    assert any("chest-xray version 2 was registered without quality gates" in m for m in started), started

    champion = app.request("GET", "/v2/models/chest-xray/versions/1").json()["parameters"]
    assert "FAILED its quality gates at registration (test_auroc_macro 0.51 < 0.70)" in champion["warnings"]
    challenger = app.request("GET", "/v2/models/chest-xray/versions/2").json()["parameters"]
    assert "registered without quality gates" in challenger["warnings"]
    config = app.request("GET", "/v2/models/chest-xray/versions/1/config").json()["parameters"]
    assert config["warnings"] == {"string_value": champion["warnings"]}

    routing = app.request("GET", "/v1/ui/models").json()["routing"]  # what the models panel shows
    assert "FAILED its quality gates" in routing["champion"]["warnings"][0]
    assert "without quality gates" in routing["challenger"]["warnings"][0]


def test_the_panel_shows_the_warnings_and_links_each_version_to_its_report() -> None:
    from radflow.ui.routes import _static_file

    page, script = _static_file("dashboard.html").decode(), _static_file("dashboard.js").decode()
    assert 'id="served-warnings"' in page and '<th scope="col">Evaluation</th>' in page
    assert '$("served-warnings")' in script and "a.warnings" in script and "reportLink(v)" in script


def test_a_versions_evaluation_report_is_served_as_html_from_its_run(served: Served) -> None:
    app = served.app
    versions = app.request("GET", "/v1/ui/models").json()["registry"]["versions"]
    assert [v["report_url"] for v in versions] == [
        "/v1/ui/registry/versions/2/report.html",
        "/v1/ui/registry/versions/1/report.html",
    ]
    report = app.request("GET", versions[1]["report_url"])
    assert report.status_code == 200 and report.content == REPORT
    assert report.headers["content-type"].startswith("text/html")
    assert "sandbox" in report.headers["content-security-policy"]  # the stored document runs no script

    missing = app.request("GET", versions[0]["report_url"])
    assert missing.status_code == 404
    why = f"chest-xray version 2 has no evaluation report: its run {served.runs[1]} has no evaluation/report.html"
    assert missing.json()["error"].startswith(why)
    unknown = app.request("GET", "/v1/ui/registry/versions/9/report.html")
    assert unknown.status_code == 404 and "9" in unknown.json()["error"]


def test_a_file_served_model_has_no_report_to_show(app: AppHarness) -> None:
    answer = app.request("GET", "/v1/ui/registry/versions/1/report.html")
    assert answer.status_code == 404 and "not registry versions" in answer.json()["error"]
