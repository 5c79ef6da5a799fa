"""Locust load test of ``POST /v1/predict`` with ground-truth checks; run by ``radflow loadtest``.

Can also be run by hand: ``locust -f $(python -c "import radflow.sim, os; print(os.path.dirname(
radflow.sim.__file__))")/locustfile.py --host URL`` with ``RADFLOW_LOADTEST_CASES`` set to a folder
written by :func:`radflow.sim.loadtest.prepare_cases` (``index.json`` + PNGs).

Environment: ``RADFLOW_LOADTEST_CASES`` (required), ``RADFLOW_LOADTEST_MAX_ERROR`` (see
:mod:`radflow.sim.judge`), ``RADFLOW_LOADTEST_WAIT`` (seconds between one user's requests, default 0).
Imports only the standard library, Locust and :mod:`radflow.sim.judge`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from locust import HttpUser, constant, task

from radflow.sim.judge import default_max_error, judge


def _load_cases() -> tuple[str, list[tuple[bytes, dict[str, Any]]]]:
    folder = os.environ.get("RADFLOW_LOADTEST_CASES")
    if not folder or not (Path(folder) / "index.json").is_file():
        raise RuntimeError(
            f"RADFLOW_LOADTEST_CASES={folder!r} is not a case folder with index.json; run `radflow loadtest` instead."
        )
    index = json.loads((Path(folder) / "index.json").read_text())
    cases = [((Path(folder) / c["file"]).read_bytes(), c) for c in index["cases"]]
    if not cases:
        raise RuntimeError(f"{folder}/index.json lists no cases.")
    return str(index.get("task", "")), cases


TASK, CASES = _load_cases()
MAX_ERROR = float(os.environ.get("RADFLOW_LOADTEST_MAX_ERROR") or default_max_error(TASK))


class RadiographUser(HttpUser):
    """A client sending held-out radiographs one after another."""

    wait_time = constant(float(os.environ.get("RADFLOW_LOADTEST_WAIT") or 0))

    @task
    def predict(self) -> None:
        body, case = random.choice(CASES)
        params = {"sex": case["sex"]} if TASK == "regression" and case.get("sex") else None
        headers = {"content-type": "image/png", "x-routing-key": case.get("study") or ""}
        with self.client.post(
            "/v1/predict", data=body, headers=headers, params=params, name="/v1/predict", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            try:
                answer = response.json()
            except ValueError:
                response.failure("answer is not JSON")
                return
            reason = judge(answer, case.get("truth") or {}, MAX_ERROR)
            if reason:
                response.failure(reason)
            else:
                response.success()
