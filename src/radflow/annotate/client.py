"""A small Label Studio REST client on httpx: the calls ``radflow annotate`` makes, and nothing else.

Checked against Label Studio 1.23's API (``label_studio/*/urls.py``): ``Authorization: Token <key>`` (the
legacy API token, which ``label-studio start --user-token`` sets and ``--enable-legacy-api-token`` allows),
``/api/current-user/whoami``, ``/api/projects/`` (list paginated as ``{count, results}``, create 201),
``/api/projects/{id}/import`` (a JSON list of tasks, each with ``data`` and ``predictions``),
``/api/projects/{id}/export?exportType=JSON`` (tasks with their ``annotations``),
``/api/tasks/{id}/annotations/`` and ``/api/ml/``.

:meth:`LabelStudio.connect` is called before any work: an unreachable server, or a token it refuses, is a
:class:`LabelStudioError` saying which, and nothing has been sent.
"""

from __future__ import annotations

from typing import Any

import httpx

from radflow.errors import RadflowError

__all__ = ["LabelStudio", "LabelStudioError"]

IMPORT_BATCH = 100
"""Tasks per import request (Label Studio reads a whole request body in memory)."""


class LabelStudioError(RadflowError):
    """Label Studio could not be reached, refused the token, or refused a request (its answer is in the message)."""

    status_code = 502


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        errors = body.get("validation_errors") or body.get("detail") or body
        return str(errors)[:500]
    return str(body)[:500]


class LabelStudio:
    """One Label Studio server at ``url``, called with the API ``token``."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"the Label Studio URL must start with http:// or https://, got {url!r}.")
        if not token:
            raise LabelStudioError(
                "no Label Studio API token: pass --token or set RADFLOW_LABEL_STUDIO_TOKEN (Account & Settings -> "
                "Access Token in Label Studio, or the --user-token it was started with)."
            )
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {token}"}, timeout=timeout_s)

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} to {what}: {exc}") from None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the API token ({response.status_code}) to {what}; check --token "
                "(a legacy token needs the server started with --enable-legacy-api-token)."
            )
        if response.status_code >= 400:
            raise LabelStudioError(f"Label Studio could not {what}: {response.status_code} {_detail(response)}")
        return response.json() if response.content else None

    def connect(self) -> dict[str, Any]:
        """Who the token belongs to; raises before any work when the server is unreachable or refuses it."""
        user: dict[str, Any] = self._call("GET", "/api/current-user/whoami", "check the API token")
        return user

    # -- projects ---------------------------------------------------------------------------

    def projects(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self._call("GET", "/api/projects/", "list projects", params={"page": page, "page_size": 100})
            results = body.get("results", []) if isinstance(body, dict) else body
            out += results
            if not isinstance(body, dict) or not body.get("next"):
                return out
            page += 1

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled ``title`` (the first made, when there are several), or None."""
        found = [p for p in self.projects() if p.get("title") == title]
        return min(found, key=lambda p: int(p["id"])) if found else None

    def project(self, project_id: int) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", f"/api/projects/{project_id}/", f"read project {project_id}")
        return body

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        body: dict[str, Any] = self._call(
            "POST",
            "/api/projects/",
            f"create project {title!r}",
            json={"title": title, "label_config": label_config, "description": description},
        )
        return body

    # -- tasks --------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        """Import ``tasks`` (``data`` + ``predictions``) into the project; returns how many Label Studio made."""
        made = 0
        for start in range(0, len(tasks), IMPORT_BATCH):
            batch = tasks[start : start + IMPORT_BATCH]
            body = self._call("POST", f"/api/projects/{project_id}/import", "import tasks", json=batch)
            made += int(body.get("task_count", len(batch))) if isinstance(body, dict) else len(batch)
        return made

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (Label Studio's JSON export)."""
        body = self._call(
            "GET", f"/api/projects/{project_id}/export", "export annotations", params={"exportType": "JSON"}
        )
        return list(body or [])

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """Submit an annotation of task ``task_id`` as the token's user (as the labelling UI's Submit does)."""
        body: dict[str, Any] = self._call(
            "POST", f"/api/tasks/{task_id}/annotations/", f"annotate task {task_id}", json={"result": result, **fields}
        )
        return body

    # -- ML backend ------------------------------------------------------------------------------

    def connect_ml_backend(self, project_id: int, url: str, title: str = "radflow") -> dict[str, Any]:
        """Connect the ML backend at ``url`` to the project (Label Studio checks its /health and /setup first)."""
        for backend in self._call("GET", "/api/ml/", "list ML backends", params={"project": project_id}) or []:
            if backend.get("url") == url:
                return dict(backend)
        body: dict[str, Any] = self._call(
            "POST",
            "/api/ml/",
            f"connect the ML backend {url}",
            json={"url": url, "project": project_id, "title": title, "is_interactive": False},
        )
        return body

    def test_ml_backend(self, backend_id: int) -> dict[str, Any]:
        """Have Label Studio send one of the project's tasks to the ML backend; its request and the backend's answer."""
        body: dict[str, Any] = self._call(
            "POST", f"/api/ml/{backend_id}/predict/test", "test the ML backend", params={"random": "true"}
        )
        return body

    def retrieve_predictions(self, project_id: int, task_ids: list[int]) -> Any:
        """Ask Label Studio to fetch predictions for ``task_ids`` from the project's ML backend (Data Manager's
        "Retrieve Predictions" action)."""
        return self._call(
            "POST",
            "/api/dm/actions",
            "retrieve predictions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": False, "included": task_ids}},
        )

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's tasks with their predictions (``fields=all``)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            try:
                body = self._call(
                    "GET",
                    "/api/tasks/",
                    "list tasks",
                    params={"project": project_id, "page": page, "page_size": 100, "fields": "all"},
                )
            except LabelStudioError as exc:  # past the last page Label Studio answers 404
                if " 404 " in str(exc) and page > 1:
                    return out
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else []
            out += tasks
            if len(out) >= int(body.get("total", 0)) or not tasks:
                return out
            page += 1
