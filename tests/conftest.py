"""Fixtures shared across the test packages, and the rule that everything under tests/e2e is marked e2e."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.models import make_onnx

_E2E = Path(__file__).parent / "e2e"

# The suite's servers (in process and `radflow serve` subprocesses) run without authentication, as the
# local demo does; tests/serve/test_auth.py turns it on per test. `radflow serve` itself defaults to tokens.
os.environ.setdefault("RADFLOW_AUTH", "off")

# The suite lets Python cache bytecode even where the environment says not to (PYTHONDONTWRITEBYTECODE=1, as in many
# container images): every DVC stage and server the suite starts is a fresh interpreter importing torch, MLflow
# and scikit-learn, and without the cache each one compiles those ~5000 modules again (7-11 s a process on two
# cores, about half of a tiny pipeline stage). Cached .pyc files change no behaviour; git ignores __pycache__.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


# `make test` runs the suite in two pytest-xdist workers. Each test file is one unit of work (so a module's
# fixtures, a server or a trained model, are made once), and files that share one session-wide thing whose
# making is the cost (the tiny demo workspace, the two-node Ray cluster) are one unit, run in file order,
# because each worker would otherwise make its own. (xdist's own `loadgroup` marks do not work with pytest 9:
# it renames `Node._nodeid`, which pytest 9 no longer reads; the scheduler below groups by path instead.)
_SHARED_GROUPS = {
    "tiny-demo": (  # tests/pipeline/tiny.py: each adds model versions to the one workspace
        "tests/e2e/test_demo.py",
        "tests/e2e/test_loop.py",
        "tests/e2e/test_workspace.py",
        "tests/e2e/test_tracking_server.py",
        "tests/e2e/test_label_studio.py",
    ),
    "ray-cluster": ("tests/scale/",),
}


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its shared group, else its file."""
    rel = nodeid.split("::", 1)[0]
    for name, members in _SHARED_GROUPS.items():
        if any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in members):
            return name
    return rel


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling with :func:`work_unit` as the scope (whatever ``--dist`` names)."""
    from xdist.scheduler import LoadScopeScheduling

    class _ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return _ByGroup(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``make unit`` (``-m "not e2e"``) leaves out exactly the tests under tests/e2e."""
    for item in items:
        if _E2E in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL server for the session (tests/postgres.py); each user takes its own database."""
    from tests.postgres import postgres_server

    yield from postgres_server()


@pytest.fixture(scope="session")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(champion, challenger): two tiny exported multi-label models with different weights."""
    root = tmp_path_factory.mktemp("serve-models")
    return make_onnx(root / "a", seed=0), make_onnx(root / "b", seed=1)
