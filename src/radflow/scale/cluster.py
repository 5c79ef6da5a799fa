"""Connecting to a Ray cluster: ``--ray auto`` or ``--ray HOST:PORT``, checked before any work starts.

Ray's usage statistics are switched off here, before ``ray`` is imported: every radflow module that
uses Ray imports it through :func:`connect` (or after importing this module), so no cluster radflow
starts or joins reports home.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from radflow.errors import ConfigError, RadflowError

__all__ = ["USAGE_STATS_ENV", "RayUnreachableError", "check_address", "connect", "ray_session"]

USAGE_STATS_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
"""The environment that keeps Ray's usage statistics off (set in this process and in clusters tests start)."""

for _key, _value in USAGE_STATS_ENV.items():
    os.environ.setdefault(_key, _value)


class RayUnreachableError(RadflowError):
    """No Ray cluster answers at the address given (or none is running, for ``auto``)."""

    status_code = 503


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--ray expects auto or HOST:PORT (the head's GCS address, e.g. 10.0.0.5:6379), got {address!r}."
        )
    return host, int(port)


def check_address(address: str, timeout: float = 3.0) -> str | None:
    """``address`` normalised for ``ray.init`` after a TCP probe of the head; ``None`` for ``auto``.

    ``ray.init`` on an address where nothing listens retries for about a minute before failing;
    the probe says so in a few seconds, before any data is read.
    """
    if address == "auto":
        return None
    if address.startswith("ray://"):
        raise ConfigError(
            f"--ray {address}: Ray Client addresses are not supported; give the head's GCS address HOST:PORT "
            "(what `ray start --head` prints) or run radflow on a cluster node with --ray auto."
        )
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnreachableError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
            f"`ray start --head --port {port}` or fix --ray."
        ) from None
    return f"{host}:{port}"


def connect(address: str) -> Any:
    """``ray.init`` on the cluster at ``address`` (``auto``: the one this machine belongs to); the ray module.

    Joins an existing cluster only: radflow never starts a hidden local one, so the work runs where
    the user said. Already connected (a second call in one process) is a no-op.
    """
    target = check_address(address)
    import ray

    if ray.is_initialized():
        return ray
    try:
        ray.init(
            address=target or "auto",
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
        )
    except ConnectionError as exc:
        if target is None:
            raise RayUnreachableError(
                "--ray auto: no Ray cluster found for this machine (none started here with `ray start`, RAY_ADDRESS "
                "unset); start one with `ray start --head` or give the head's address: --ray HOST:PORT."
            ) from None
        raise RayUnreachableError(f"--ray {address}: {str(exc).splitlines()[0]}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """:func:`connect` for a block; disconnects at the end unless this process was connected already."""
    import ray

    was = ray.is_initialized()
    module = connect(address)
    try:
        yield module
    finally:
        if not was:
            ray.shutdown()
