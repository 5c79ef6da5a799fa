"""The web UI against a server that needs tokens: Chromium asks for one, keeps it for the tab, sends it.

A reader's page first gets 401s and shows the token bar; with a reader token it scores an upload,
shows the stored image and a heatmap (fetched with the token, so shown from blob: URLs) and saves
feedback, which the audit log records under the token's name. Skipped as tests/e2e/test_ui_browser.py
is, where Chromium cannot be had.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radflow.auth import create_token
from radflow.store import audit_events
from tests.e2e.test_ui_browser import browser, page  # noqa: F401  (fixtures)
from tests.serve.models import make_onnx, png_bytes
from tests.ui.server import UiServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    root = tmp_path_factory.mktemp("ui-auth")
    srv = UiServer(make_onnx(root / "a", seed=0), root, admin_token=None, auth="tokens").start()
    yield srv
    srv.stop()


def _blob_image_from(pg: Any, part: str) -> None:
    pg.wait_for_function(
        """part => { const i = document.querySelector('#image');
                     return i.src.startsWith('blob:') && (i.dataset.src || '').includes(part)
                            && i.complete && i.naturalWidth > 0; }""",
        arg=part,
    )


def test_reader_page_asks_for_a_token_then_sends_it_with_every_call(
    server: UiServer,
    page: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    token, _ = create_token(server.service.require_store(), "dr-lee", "reader")
    page.goto(server.url + "/")
    bar = page.locator("#token-bar")
    bar.wait_for()
    assert "Authorization: Bearer" in page.locator("#token-message").inner_text()
    page.fill("#token-input", token)
    with page.expect_navigation():
        page.click("#token-bar button")
    assert page.evaluate("() => sessionStorage.getItem('radflow.token')") == token
    assert page.locator("#token-bar").count() == 0  # nothing was refused after the reload

    png = tmp_path / "chest.png"
    png.write_bytes(png_bytes(5, (96, 80)))
    page.set_input_files("#file", str(png))
    page.wait_for_selector("#model-info .mono")
    pid = str(page.locator("#model-info .mono").text_content())
    _blob_image_from(page, f"/v1/ui/predictions/{pid}/image.png")
    page.locator("#findings li").nth(0).locator(".heatmap-toggle").click()
    _blob_image_from(page, "/heatmap.png")

    page.click("#confirm-all")
    page.click("#send")
    page.wait_for_selector('#feedback-status[data-kind="ok"]')
    page.locator(f'#history tr[data-id="{pid}"]').wait_for()

    store = server.service.require_store()
    mine = {(e["action"], e["status"]) for e in audit_events(store, actor="dr-lee")}
    assert {("view_image", 200), ("view_heatmap", 200), ("feedback", 201), ("list_recent", 200)} <= mine
    refused = {e["action"] for e in audit_events(store, actor="unauthenticated")}
    assert "list_recent" in refused  # the first, tokenless visit
