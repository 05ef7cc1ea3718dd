"""The relay's URL space (DESIGN.md "URL layout")."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from relay import endpoints


def _asgi(handler: ASGIApp) -> ASGIApp:
    """Wrap a raw ASGI function so Starlette sees an app, not an endpoint to wrap in a Request.

    A class whose ``__call__`` *is* the function adds no coroutine frame of its own: thousands of
    held polls each keep their whole chain of frames alive (bench/idle_pollers.py).
    """
    return type(getattr(handler, "__name__", "Asgi"), (), {"__call__": staticmethod(handler)})()  # type: ignore[no-any-return]


def routes() -> list[BaseRoute]:
    public = _asgi(endpoints.public)
    return [
        Route("/reversehttp", endpoints.gateway, methods=["GET", "POST"]),
        Route("/reversehttp/p/{cap}", endpoints.private, methods=["GET", "PUT", "DELETE"]),
        # Raw ASGI callables: they see receive() directly (held polls watch it for disconnects).
        Route("/reversehttp/r/{cap}", _asgi(endpoints.request_url)),
        Route("/relay/{name}", public),
        Route("/relay/{name}/{path:path}", public),
    ]
