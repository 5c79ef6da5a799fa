"""The doors' shared process plumbing: a named error for a bad log level, /metrics only while inside."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from radflow.daemon import log_to_stderr, metrics_http
from radflow.errors import ConfigError
from radflow.hardware import free_port


def test_a_bad_log_level_names_the_choices_and_a_good_one_sets_one_handler() -> None:
    with pytest.raises(ConfigError, match="'loud' is not one of debug, info, warning, error"):
        log_to_stderr("radflow.test-daemon", "loud")
    for _ in range(2):
        log_to_stderr("radflow.test-daemon", "warning")
    logger = logging.getLogger("radflow.test-daemon")
    assert logger.level == logging.WARNING and len(logger.handlers) == 1


def test_metrics_are_served_while_inside_and_the_port_is_closed_after() -> None:
    registry = CollectorRegistry()
    Counter("radflow_test_daemon", "a test counter", registry=registry).inc(3)
    port = free_port()

    async def scrape() -> str:
        async with metrics_http(port, "127.0.0.1", registry), httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{port}/metrics")).text

    assert "radflow_test_daemon_total 3.0" in asyncio.run(scrape())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
