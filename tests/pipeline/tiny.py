"""One tiny demo workspace per test session, shared by the demo test and the workspace e2e tests.

Building it (init + the whole pipeline on 60 phantom images at 32 px, one epoch) takes about a
minute on two cores, so it is made once: the first caller runs ``radflow demo --no-serve`` and
everyone after gets the same folder and output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from radflow.cli import app
from radflow.pipeline.dvc_yaml import REGISTRATION

__all__ = ["TINY_SETS", "TinyDemo", "tiny_demo"]

TINY_SETS = (
    "gates.min_macro_auroc=0",  # one epoch on 60 images is near chance; the gate must still pass
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
