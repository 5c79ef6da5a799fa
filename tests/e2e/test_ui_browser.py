"""The web UI in a real browser: Playwright drives Debian's headless Chromium against a uvicorn server.

A reader uploads a PNG and a DICOM, sees findings, toggles a heatmap and saves feedback; the
operator dashboard counts it; a bone-age model shows years and months. Screenshots go to
``test-artifacts/ui/``. Chromium is installed with apt-get when missing; the tests are skipped,
with the reason, only where that fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from radflow.data.dicom import write_dicom
from radflow.tracking import client
from tests.debian import ensure_debian_package
from tests.serve.models import jpeg_bytes, make_onnx, png_bytes
from tests.ui.server import UiServer

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
TOKEN = "ui-test-token"
MODEL_NAME = "chest-xray"
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    ensure_debian_package("chromium", CHROMIUM.exists)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    root = tmp_path_factory.mktemp("ui-browser")
    champion, challenger = make_onnx(root / "a", seed=0), make_onnx(root / "b", seed=1)
    # A registry whose versions the dashboard lists, promotes and rolls back (the served files stand in).
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow = client(tracking_uri, create=True)
    mlflow.create_registered_model(MODEL_NAME)
    for n in (1, 2):
        mlflow.create_model_version(MODEL_NAME, f"file://{root}/v{n}", tags={"test_macro_auroc": f"0.8{n}"})
    mlflow.set_registered_model_alias(MODEL_NAME, "champion", "1")
    # The challenger gets no traffic until the dashboard's canary control gives it some.
    srv = UiServer(
        champion,
        root,
        challenger=str(challenger),
        challenger_weight=0.0,
        tracking_uri=tracking_uri,
        model_name=MODEL_NAME,
    ).start()
    yield srv
    srv.stop()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=WIDE)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _current_id(page: Any) -> str | None:
    node = page.locator("#model-info .mono")
    return str(node.text_content()) if node.count() else None


def _upload(page: Any, path: Path | None, before: str | None = None) -> str:
    """Pick ``path`` with the file input (None: already picked); the prediction id once the findings show."""
    if path is not None:
        before = _current_id(page)
        page.set_input_files("#file", str(path))
    page.wait_for_function(
        "prev => { const n = document.querySelector('#model-info .mono'); return n && n.textContent !== prev; }",
        arg=before,
    )
    return str(page.locator("#model-info .mono").text_content())


def _image_loaded(page: Any) -> bool:
    return bool(page.eval_on_selector("#image", "img => img.complete && img.naturalWidth > 0"))


def _unlabelled_controls(page: Any) -> list[str]:
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                .filter(c => c.type !== 'hidden')
                .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
                             && !(c.tagName === 'BUTTON' && c.textContent.trim()))
                .map(c => c.id || c.outerHTML.slice(0, 60))"""
        )
    )


def _choose_with_space(page: Any) -> Any:
    """The file chooser Space opens on the focused file input (pressed again if a busy browser dropped it)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        try:
            with page.expect_file_chooser(timeout=5000) as chooser:
                page.keyboard.press("Space")
            return chooser.value
        except PlaywrightTimeout:
            assert page.evaluate("() => document.activeElement.id") == "file", "focus left the file input"
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _fits(page: Any) -> bool:
    return bool(page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_reader_scores_png_and_dicom_and_dashboard_counts_feedback(server: UiServer, page: Any, tmp_path: Path) -> None:
    png = tmp_path / "chest.png"
    png.write_bytes(png_bytes(3, (96, 80)))
    dicom = tmp_path / "chest.dcm"
    rng = np.random.default_rng(1)
    write_dicom(dicom, rng.integers(0, 4096, (64, 56), dtype=np.uint16), bits_stored=12)

    page.goto(server.url + "/")
    assert _unlabelled_controls(page) == []
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector('#status[data-kind="error"]')
    assert page.locator("#status").inner_text().startswith("Could not score notes.txt: ")
    assert page.locator("#result").is_hidden()
    # Keyboard upload: Tab reaches the file input (announced by its label) and Space opens the picker.
    for _ in range(3):
        page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "file"
    _choose_with_space(page).set_files(str(png))
    pid = _upload(page, None)
    findings = page.locator("#findings li")
    assert findings.count() == 3
    for i in range(3):
        item = findings.nth(i)
        prob = float(item.locator(".bar").get_attribute("aria-valuenow")) / 100
        tick_left = item.locator(".tick").evaluate("t => parseFloat(t.style.left)") / 100
        positive = "positive" in (item.get_attribute("class") or "")
        assert positive == (prob >= tick_left), "positives are highlighted at the marked threshold"
    assert page.locator("#model-info").inner_text().count("champion") == 1
    page.wait_for_function(
        "() => { const i = document.querySelector('#image'); return i.complete && i.naturalWidth > 0; }"
    )

    label = str(findings.nth(1).get_attribute("data-label"))
    with page.expect_response(lambda r: "heatmap.png" in r.url) as heat:
        findings.nth(1).locator(".heatmap-toggle").click()
    assert heat.value.status == 200 and heat.value.headers["content-type"] == "image/png"
    assert findings.nth(1).locator(".heatmap-toggle").get_attribute("aria-pressed") == "true"
    assert page.locator("#caption").inner_text() == f"Heatmap: {label}"
    page.wait_for_function("() => document.querySelector('#image').src.includes('heatmap.png')")
    page.wait_for_function(
        "() => { const i = document.querySelector('#image'); return i.complete && i.naturalWidth > 0; }"
    )
    page.screenshot(path=str(ARTIFACTS / "reader-heatmap-1280.png"))

    # Correct one finding (the opposite of the model's call), call the whole prediction incorrect.
    was_positive = "positive" in (findings.nth(1).get_attribute("class") or "")
    findings.nth(1).locator("select").select_option("0" if was_positive else "1")
    page.check('input[name="verdict"][value="false"]')
    page.fill("#comment", "effusion call is wrong")
    page.click("#send")
    page.wait_for_selector('#feedback-status[data-kind="ok"]')
    assert page.locator("#feedback-status").inner_text().startswith("Feedback saved")
    saved = server.service.require_store().feedback(pid)
    assert len(saved) == 1
    assert saved[0]["labels"] == {label: 0 if was_positive else 1}
    assert saved[0]["correct"] is False and saved[0]["comment"] == "effusion call is wrong"
    row = page.locator(f'#history tr[data-id="{pid}"]')
    row.locator("td.fb.yes").wait_for()
    assert "incorrect" in row.inner_text() and "1 corrected" in row.inner_text()

    # Drag and drop a JPEG onto the drop zone.
    before = _current_id(page)
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], "drop.jpg", { type: "image/jpeg" });
            const dt = new DataTransfer();
            dt.items.add(file);
            document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
        }""",
        list(jpeg_bytes(2)),
    )
    dropped = _upload(page, None, before)
    assert server.service.require_store().get_prediction(dropped)["input_format"] == "jpeg"
    # The worklist lists the unread studies (a prediction without a study key is its own), not the one read;
    # Open shows the study's image.
    page.locator(f'#worklist tr[data-study="prediction:{dropped}"]').wait_for()
    assert page.locator(f'#worklist tr[data-study="prediction:{pid}"]').count() == 0
    page.locator(f'#history tr[data-id="{pid}"] button').click()
    page.wait_for_function("pid => document.querySelector('#model-info .mono').textContent === pid", arg=pid)
    page.locator(f'#worklist tr[data-study="prediction:{dropped}"] button').click()
    page.wait_for_function("pid => document.querySelector('#model-info .mono').textContent === pid", arg=dropped)

    dicom_id = _upload(page, dicom)
    assert dicom_id != pid
    assert page.locator("#findings li").count() == 3
    page.wait_for_function("() => document.querySelector('#image').src.includes('/image.png')")
    page.wait_for_function(
        "() => { const i = document.querySelector('#image'); return i.complete && i.naturalWidth > 0; }"
    )
    assert server.service.require_store().get_prediction(dicom_id)["input_format"] == "dicom"
    page.click("#confirm-all")
    page.click("#send")
    page.wait_for_selector('#feedback-status[data-kind="ok"]')
    page.screenshot(path=str(ARTIFACTS / "reader-dicom-1280.png"), full_page=True)

    # Reopening the PNG from the history shows its findings with the reader's saved answers.
    page.locator(f'#history tr[data-id="{pid}"] button').click()
    page.wait_for_function("pid => document.querySelector('#model-info .mono').textContent === pid", arg=pid)
    assert page.is_checked('input[name="verdict"][value="false"]')
    assert page.input_value("#comment") == "effusion call is wrong"
    assert page.locator("#findings li").nth(1).locator("select").input_value() == ("0" if was_positive else "1")
    page.set_viewport_size(NARROW)
    assert _fits(page), "the reader page scrolls sideways in a narrow window"
    page.screenshot(path=str(ARTIFACTS / "reader-390.png"), full_page=True)

    page.set_viewport_size(WIDE)
    page.goto(server.url + "/dashboard")
    assert _unlabelled_controls(page) == []
    page.wait_for_function("() => document.querySelector('#feedback-total').textContent === '2'")
    champion = page.locator('#arms tr[data-arm="champion"]')
    assert champion.locator("td").nth(1).inner_text() == "3"
    assert "No predictions" not in page.locator("#feedback").inner_text()
    assert "50.0% of 2" in page.locator("#feedback tbody").inner_text(), "one of two verdicts said correct"
    page.wait_for_selector('#monitoring h3[data-status="collecting"]')
    assert "3 of 100 predictions needed" in page.locator("#monitoring").inner_text()
    # Live traffic shows up on the next refreshes: a request rate above zero and a latency line.
    page.select_option("#refresh", "1000")
    for seed in range(6):
        assert httpx.post(f"{server.url}/v1/predict", content=png_bytes(10 + seed)).status_code == 200
    page.wait_for_function("() => parseFloat(document.querySelector('#rate-now').textContent) > 0")
    page.wait_for_function("() => /M[0-9]/.test(document.querySelector('#latency-chart path.s1').getAttribute('d'))")
    # A refresh may land between two of the posts (a busy machine): wait for the one that counts all nine.
    page.wait_for_function(
        """() => document.querySelectorAll('#arms tr[data-arm="champion"] td')[1].textContent === '9'"""
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard-1280.png"), full_page=True)
    page.set_viewport_size(NARROW)
    assert _fits(page), "the dashboard scrolls sideways in a narrow window"
    page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)


def test_dashboard_canary_control_uses_the_pasted_token(server: UiServer, page: Any) -> None:
    page.goto(server.url + "/dashboard")
    page.fill("#token", "not-the-token")
    page.click("#apply-routing")
    page.wait_for_selector('#admin-status[data-kind="error"]')
    assert "wrong admin token" in page.locator("#admin-status").inner_text()

    page.fill("#token", TOKEN)
    page.fill("#canary", "150")
    page.click("#apply-routing")
    page.wait_for_selector('#admin-status[data-kind="error"]:has-text("between 0 and 100")')

    page.fill("#canary", "100")
    page.click("#apply-routing")
    page.wait_for_selector('#admin-status[data-kind="ok"]')
    try:
        answer = httpx.post(f"{server.url}/v1/predict", content=png_bytes(40)).json()
        assert answer["arm"] == "challenger", "a 100 % canary sends every request to the challenger"
        page.locator('#arms tr[data-arm="challenger"]').wait_for()
        page.wait_for_function(
            """() => document.querySelector('#arms tr[data-arm="challenger"] td:nth-child(2)').textContent === '1'"""
        )
        assert "challenger answers 100.0%" in page.locator("#routing-mode").inner_text()
        page.screenshot(path=str(ARTIFACTS / "dashboard-canary-1280.png"), full_page=True)
    finally:
        server.service.set_routing(0.0, False)
    page.reload()
    assert page.input_value("#token") == TOKEN, "the token is kept for the tab (sessionStorage)"


def test_dashboard_promotes_and_rolls_back_the_champion(server: UiServer, page: Any) -> None:
    page.goto(server.url + "/dashboard")
    champion_of = "v => document.querySelector('#versions tbody tr:nth-child(' + v + ') td:nth-child(2)')?.textContent"
    page.wait_for_function(f"() => ({champion_of})(2) === '@champion'")  # newest first: v2, then v1
    assert "test_macro_auroc=0.82" in page.locator("#versions tbody tr").first.inner_text()
    page.fill("#token", TOKEN)
    page.fill("#promote-version", "2")
    page.click("#promote")
    page.wait_for_selector('#admin-status[data-kind="ok"]')
    page.wait_for_function(f"() => ({champion_of})(1) === '@champion'")
    aliases = client(str(server.service.settings.resolved_tracking_uri())).get_registered_model(MODEL_NAME).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "2"}
    page.screenshot(path=str(ARTIFACTS / "dashboard-promoted-1280.png"), full_page=True)
    page.click("#rollback")
    page.wait_for_function(f"() => ({champion_of})(2) === '@champion'")
    page.fill("#promote-version", "9")
    page.click("#promote")
    page.wait_for_selector('#admin-status[data-kind="error"]')
    assert "9" in page.locator("#admin-status").inner_text(), "the server's reason is shown"


def test_dashboard_shows_monitoring_once_the_service_has_it(server: UiServer, page: Any) -> None:
    # A drifting window takes hundreds of requests; a stand-in answer of the real shape shows how it reads.
    score = {"group": "input", "threshold": 0.2}
    report = {
        "drift": {
            "enabled": True,
            "models": {
                "chest/3": {
                    "model": "chest",
                    "version": "3",
                    "status": "alert",
                    "reason": None,
                    "window": {"size": 500, "capacity": 500, "min": 100},
                    "alert": True,
                    "scores": [
                        {**score, "feature": "intensity_mean", "statistic": "psi", "score": 0.31, "alert": True},
                        {**score, "feature": "intensity_mean", "statistic": "ks", "score": 0.05, "alert": False},
                    ],
                }
            },
        },
        "online": {"champion": {"auroc": 0.87}},
        "alerts": [
            {
                "created_at": "2026-12-01T04:00:00+00:00",
                "kind": "drift",
                "message": "chest v3: psi of intensity_mean is 0.310 (threshold 0.2) over the last 500 predictions.",
            }
        ],
    }
    page.route("**/v1/monitoring", lambda route: route.fulfill(json=report))
    page.goto(server.url + "/dashboard")
    page.wait_for_selector("#monitoring table.drift")
    assert "chest/3" in page.locator('#monitoring h3[data-status="alert"]').inner_text()
    alerting = page.locator('#monitoring table.drift tr[data-alert="true"]')
    assert alerting.count() == 1
    assert alerting.inner_text().split() == ["intensity_mean", "psi", "0.3100", "0.20", "ALERT"]
    text = page.locator("#monitoring").inner_text()
    assert "online.champion.auroc" in text and "0.8700" in text
    assert "psi of intensity_mean is 0.310" in page.locator("#monitoring ul.alerts").inner_text()


def test_bone_age_shows_years_and_months_and_takes_the_readers_estimate(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("ui-boneage")
    srv = UiServer(make_onnx(root / "model", seed=0, task="regression"), root).start()
    context = browser.new_context(viewport=WIDE)
    try:
        page = context.new_page()
        page.goto(srv.url + "/")
        image = root / "hand.png"
        image.write_bytes(png_bytes(5, (64, 48)))
        pid = _upload(page, image)
        value = srv.service.require_store().get_prediction(pid)["outputs"]["prediction"]["value"]
        months = round(value)
        assert page.locator("#findings").is_hidden()
        text = page.locator("#value").inner_text()
        assert f"{max(months, 0) // 12} y {max(months, 0) % 12} m" in text
        page.fill("#est-years", "9")
        page.fill("#est-months", "6")
        page.click("#send")
        page.wait_for_selector('#feedback-status[data-kind="ok"]')
        assert srv.service.require_store().feedback(pid)[0]["value"] == 114
        page.locator(f'#history tr[data-id="{pid}"] td.fb.yes').wait_for()
        assert "estimate 9 y 6 m" in page.locator(f'#history tr[data-id="{pid}"]').inner_text()
        page.screenshot(path=str(ARTIFACTS / "reader-boneage-1280.png"), full_page=True)
    finally:
        context.close()
        srv.stop()
