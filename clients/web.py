"""Routes the server offers for browser clients: the JS library and the demo page (placeholder)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
