"""One phantom workspace for the workflow tests that serve (tests/workflow/models.py builds it: ~10 s).

Session-scoped and shared by ``test_workflow.py`` and ``test_serving.py``: it declares both modules'
workflows (:data:`tests.workflow.models.SERVED_WORKFLOWS`). A test that moves an alias puts it back.
"""

from __future__ import annotations

import pytest

from tests.workflow.models import DETECTOR, SERVED_WORKFLOWS, PhantomWorkspace, make_workspace


@pytest.fixture(scope="session")
def workflow_workspace(tmp_path_factory: pytest.TempPathFactory) -> PhantomWorkspace:
    from radflow.tracking import client as tracking_client

    made = make_workspace(tmp_path_factory.mktemp("workflow-ws"), SERVED_WORKFLOWS)
    tracking_client(made.tracking_uri).set_registered_model_alias(DETECTOR, "spare", "1")  # reload test removes it
    return made
