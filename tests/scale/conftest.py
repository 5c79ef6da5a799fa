"""The one two-node Ray cluster of a test session (tests/ray_cluster.py), started by the first test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ray_cluster import RayCluster
from tests.ray_cluster import ray_cluster as start_ray_cluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A running cluster of two one-CPU nodes (``ray start --head`` + ``ray start --address``); its GCS address."""
    yield from start_ray_cluster()
