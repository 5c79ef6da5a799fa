"""``radflow loadtest``: headless Locust against a running service, with reports and ground-truth checks.

Locust runs in a subprocess, never in the radflow process: it monkeypatches the standard library
with gevent on import, which would break threads, asyncio and ONNX Runtime here. radflow prepares
the held-out cases as a folder of PNGs plus ``index.json`` (ground truth), so the Locust process
needs nothing but the standard library, Locust and :mod:`radflow.sim.judge`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radflow.errors import ConfigError, RadflowError
from radflow.runtime.cam import encode_png
from radflow.sim.judge import default_max_error
from radflow.sim.traffic import CaseSource

__all__ = ["LOCUSTFILE", "LoadtestConfig", "prepare_cases", "read_stats", "run_loadtest"]

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CSV_PREFIX = "locust"
HTML_REPORT = "locust-report.html"


@dataclass(frozen=True)
class LoadtestConfig:
    url: str
    out: Path
    """Folder for the cases, Locust's CSV and HTML reports and its log."""
    users: int = 10
    duration: float = 30.0
    spawn_rate: float | None = None
    """Users started per second (default: all within the first second)."""
    dataset: Path | None = None
    """Held-out cases with ground truth; without one, noise images are sent and only HTTP errors count."""
    split: str = "test"
    max_error: float | None = None
    """See :mod:`radflow.sim.judge`; default by task (0.9 probability, 24 months)."""
    max_cases: int = 200
    wait: float = 0.0
    """Seconds between one user's requests (0: back to back)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"URL {self.url!r} must start with http:// or https://, e.g. http://127.0.0.1:8000.")
        if self.users < 1:
            raise ConfigError(f"--users must be >= 1, got {self.users}.")
        if not self.duration >= 1:
            raise ConfigError(f"--duration must be >= 1 second, got {self.duration:g}.")
        if self.spawn_rate is not None and not self.spawn_rate > 0:
            raise ConfigError(f"--spawn-rate must be > 0 users per second, got {self.spawn_rate:g}.")
        if self.max_error is not None and not self.max_error > 0:
            raise ConfigError(f"--max-error must be > 0, got {self.max_error:g}.")
        if self.max_cases < 1:
            raise ConfigError(f"--max-cases must be >= 1, got {self.max_cases}.")
        if self.wait < 0:
            raise ConfigError(f"--wait must be >= 0 seconds, got {self.wait:g}.")


def prepare_cases(out: Path, dataset: Path | None, split: str = "test", max_cases: int = 200, seed: int = 0) -> Path:
    """Write up to ``max_cases`` held-out cases as ``out/NNNNN.png`` + ``out/index.json``; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink(missing_ok=True)
    cases: list[dict[str, Any]] = []
    if dataset is None:
        task = ""
        rng = np.random.default_rng(seed)
        for i in range(min(max_cases, 16)):
            name = f"{i:05d}.png"
            (out / name).write_bytes(encode_png(rng.integers(0, 256, (64, 64), dtype=np.uint8)))
            cases.append({"file": name, "truth": {}, "sex": None, "study": f"noise-{i}"})
    else:
        source = CaseSource(dataset, split, seed=seed)
        task = source.task
        picked = np.random.default_rng(seed).permutation(len(source))[:max_cases]
        for i, index in enumerate(sorted(picked.tolist())):
            case = source.case(index)
            name = f"{i:05d}.png"
            (out / name).write_bytes(encode_png(case.pixels))
            cases.append({"file": name, "truth": case.truth, "sex": case.sex, "study": case.study})
    index = {"task": task, "dataset": str(dataset) if dataset else None, "split": split, "cases": cases}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return out


_WRAPPED = re.compile(r"""^CatchResponseError\((['"])(.*)\1\)$""", re.S)


def _error_text(error: str) -> str:
    """The message a Locust task gave ``response.failure``, without Locust's ``CatchResponseError('...')``."""
    match = _WRAPPED.match(error.strip())
    return match.group(2) if match else error


def _num(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_stats(prefix: Path) -> dict[str, Any]:
    """Endpoints, totals and failures from Locust's ``PREFIX_stats.csv`` and ``PREFIX_failures.csv``."""
    stats_file = prefix.parent / f"{prefix.name}_stats.csv"
    if not stats_file.is_file():
        raise RadflowError(f"Locust wrote no statistics ({stats_file} is missing).")
    rows = []
    with stats_file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append(
                {
                    "method": row.get("Type", ""),
                    "name": row.get("Name", ""),
                    "requests": int(row.get("Request Count") or 0),
                    "failures": int(row.get("Failure Count") or 0),
                    "rps": _num(row.get("Requests/s", "")),
                    "avg_ms": _num(row.get("Average Response Time", "")),
                    "p50_ms": _num(row.get("50%", "")),
                    "p95_ms": _num(row.get("95%", "")),
                    "p99_ms": _num(row.get("99%", "")),
                    "max_ms": _num(row.get("Max Response Time", "")),
                }
            )
    total = next((r for r in rows if r["name"] == "Aggregated"), None)
    failures: list[dict[str, Any]] = []
    failures_file = prefix.parent / f"{prefix.name}_failures.csv"
    if failures_file.is_file():
        with failures_file.open(newline="") as fh:
            for row in csv.DictReader(fh):
                failures.append(
                    {
                        "name": row.get("Name", ""),
                        "error": _error_text(row.get("Error", "")),
                        "count": int(row.get("Occurrences") or 0),
                    }
                )
    failures.sort(key=lambda f: -f["count"])
    return {
        "endpoints": [r for r in rows if r["name"] != "Aggregated"],
        "total": total,
        "failures": failures,
        "wrong_predictions": sum(f["count"] for f in failures if "wrong prediction" in f["error"]),
    }


def run_loadtest(config: LoadtestConfig) -> dict[str, Any]:
    """Run headless Locust for ``config.duration`` s; returns the parsed statistics and report paths."""
    from radflow.sim.simulator import check_server

    check_server(config.url)
    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cases = prepare_cases(out / "cases", config.dataset, config.split, config.max_cases, config.seed)
    task = json.loads((cases / "index.json").read_text())["task"]
    max_error = config.max_error if config.max_error is not None else default_max_error(task)
    prefix = out / CSV_PREFIX
    html = out / HTML_REPORT
    log_file = out / "locust.log"
    for stale in [html, *out.glob(f"{CSV_PREFIX}_*.csv")]:
        stale.unlink(missing_ok=True)
    spawn_rate = config.spawn_rate if config.spawn_rate is not None else float(config.users)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        config.url.rstrip("/"),
        "--users",
        str(config.users),
        "--spawn-rate",
        f"{spawn_rate:g}",
        "--run-time",
        f"{max(1, round(config.duration))}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(prefix),
        "--html",
        str(html),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {
        **os.environ,
        "RADFLOW_LOADTEST_CASES": str(cases),
        "RADFLOW_LOADTEST_MAX_ERROR": f"{max_error:g}",
        "RADFLOW_LOADTEST_WAIT": f"{config.wait:g}",
    }
    with log_file.open("wb") as log:
        try:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=config.duration + 120)
        except subprocess.TimeoutExpired:
            raise RadflowError(f"Locust did not finish within {config.duration + 120:g} s; see {log_file}.") from None
    # Locust exits 1 when any request failed: still a finished test with a report.
    if proc.returncode not in (0, 1) or not (out / f"{CSV_PREFIX}_stats.csv").is_file():
        tail = log_file.read_text(errors="replace")[-2000:]
        raise RadflowError(f"Locust exited with code {proc.returncode}; last lines of {log_file}:\n{tail}")
    stats = read_stats(prefix)
    return {
        "url": config.url,
        "users": config.users,
        "duration_s": config.duration,
        "task": task or None,
        "cases": len(json.loads((cases / "index.json").read_text())["cases"]),
        "max_error": max_error if task else None,
        **stats,
        "reports": {
            "csv": [str(p) for p in sorted(out.glob(f"{CSV_PREFIX}_*.csv"))],
            "html": str(html) if html.is_file() else None,
            "log": str(log_file),
        },
    }
