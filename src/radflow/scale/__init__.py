"""Scaling out on Ray: batch scoring on Ray Data (``radflow score --ray``) and sweeps on Ray Tune (``radflow sweep``).

Ray is imported only inside these modules' functions, after :mod:`radflow.scale.cluster` has switched
its usage statistics off. Nothing here imports :mod:`radflow.serve`.
"""

from __future__ import annotations

from radflow.scale.cluster import RayUnreachableError, check_address, connect, ray_session

__all__ = ["RayUnreachableError", "check_address", "connect", "ray_session"]
