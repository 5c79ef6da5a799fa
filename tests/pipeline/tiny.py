"""One tiny demo workspace per test session, shared by the demo, loop and workspace e2e tests.

Building it (init + the whole pipeline on 60 phantom images at 32 px, one epoch) takes one to two
minutes on two cores, so it is made once: the first caller runs ``radflow demo --no-serve`` and
everyone after gets the same folder and output. Its users run in file order (tests/e2e/test_demo.py,
test_loop.py, test_workspace.py) and each adds model versions, so none assumes a version number:
:func:`latest_version` says what the registry holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from radflow.cli import app
from radflow.pipeline.dvc_yaml import REGISTRATION

__all__ = ["TINY_SETS", "TinyDemo", "latest_version", "tiny_demo"]

TINY_SETS = (
    "gates.min_macro_auroc=0",  # one epoch on 60 images is near chance; the gate must still pass
    "gates.max_label_drop=1.0",  # ... and a retrained version must be compared with the champion, not pass on merit
    "gates.min_positives=1",  # a test split of ~10 images: compare every label that has both classes
    "gates.min_negatives=1",
    "evaluate.n_bootstrap=20",
    "train.num_workers=0",
    "export.opset=17",
)


@dataclass(frozen=True)
class TinyDemo:
    workdir: Path
    exit_code: int
    output: str
    # what the demo's register stage wrote, read at once: later tests re-run the pipeline in the
    # same workspace and overwrite the file
    registration: dict[str, Any] = field(default_factory=dict)


_made: dict[str, TinyDemo] = {}


def latest_version(workdir: Path, name: str = "chest-xray") -> int:
    """The highest registered version of ``name`` in the workspace's registry."""
    from radflow.tracking import client, resolve_tracking_uri

    versions = client(resolve_tracking_uri(workspace=workdir)).search_model_versions(f"name='{name}'")
    return max(int(v.version) for v in versions)


def tiny_demo(base: Path) -> TinyDemo:
    """The shared tiny demo workspace under ``base`` (made on first use)."""
    if "demo" not in _made:
        workdir = base / "tiny-demo"
        args = ["demo", "--no-serve", "--dir", str(workdir), "--n", "60", "--size", "32", "--epochs", "1"]
        for item in TINY_SETS:
            args += ["-S", item]
        result = CliRunner().invoke(app, args)
        reg_file = workdir / REGISTRATION
        registration = json.loads(reg_file.read_text()) if reg_file.is_file() else {}
        _made["demo"] = TinyDemo(workdir, result.exit_code, result.output, registration)
    return _made["demo"]
