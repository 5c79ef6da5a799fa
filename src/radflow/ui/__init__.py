"""The web UI: a reader page to upload radiographs, see findings and heatmaps and give feedback, and an
operator dashboard with live charts and model controls — served by ``radflow serve`` at ``/`` and
``/dashboard`` through :func:`ui_router`.
"""

from __future__ import annotations

from radflow.ui.routes import ui_router

__all__ = ["ui_router"]
