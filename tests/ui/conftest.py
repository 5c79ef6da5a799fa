from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radflow.inference import ServeSettings
from tests.serve.harness import AppHarness


@pytest.fixture(scope="session")
def ui_model(onnx_pair: tuple[Path, Path]) -> Path:
    """A tiny multi-label model (three chest labels, 32 px): the shared champion fixture."""
    return onnx_pair[0]


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
