"""The admin dashboard at ``/``: registrations, subscriptions, deliveries, live charts (SSE)."""

from __future__ import annotations

from reversehub.server.dashboard.routes import routes

__all__ = ["routes"]
