from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.models import make_onnx


@pytest.fixture(scope="session")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(champion, challenger): two tiny multi-label models with different weights."""
    root = tmp_path_factory.mktemp("serve-models")
    return make_onnx(root / "a", seed=0), make_onnx(root / "b", seed=1)
