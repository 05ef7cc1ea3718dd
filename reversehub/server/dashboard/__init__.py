"""The admin side: the dashboard at ``/``, its API, and the relay's list of names (``GET /reversehttp``)."""

from __future__ import annotations

from reversehub.server.dashboard.routes import listing_routes, routes

__all__ = ["listing_routes", "routes"]
