from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radflow.inference import ServeSettings
from tests.serve.harness import AppHarness
from tests.serve.models import make_onnx


@pytest.fixture(scope="session")
def ui_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multi-label model (three chest labels, 32 px)."""
    return make_onnx(tmp_path_factory.mktemp("ui-model"), seed=0)


def ui_harness(model: Path, root: Path, **settings: object) -> AppHarness:
    """The service in process (its app includes the UI routes)."""
    return AppHarness(
        ServeSettings(model=str(model), store_url=f"sqlite:///{root / 'serving.db'}", threads=1, **settings)  # type: ignore[arg-type]
    )


@pytest.fixture()
def app(ui_model: Path, tmp_path: Path) -> Iterator[AppHarness]:
    harness = ui_harness(ui_model, tmp_path)
    yield harness
    harness.close()
