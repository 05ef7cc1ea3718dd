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


_PUBLIC = _asgi(endpoints.public)
_REQUEST_URL = _asgi(endpoints.request_url)


def hot_route(path: str) -> tuple[ASGIApp, dict[str, str]] | None:
    """The endpoint and path parameters :func:`routes` would give a public URL or a request URL.

    These two run for every relayed request (the request, the poll, the reply), so the app finds
    them without walking the router (reversehub.server.app). None for any other path, and for a path the
    routes below would not match either (the router then answers it as before).
    """
    if path.startswith("/relay/"):
        name, slash, rest = path[7:].partition("/")
        if not name:
            return None
        return _PUBLIC, {"name": name, "path": rest} if slash else {"name": name}
    if path.startswith("/reversehttp/r/"):
        cap = path[15:]
        if not cap or "/" in cap:
            return None
        return _REQUEST_URL, {"cap": cap}
    return None


def routes() -> list[BaseRoute]:
    return [
        Route("/reversehttp", endpoints.gateway, methods=["GET", "POST"]),
        Route("/reversehttp/p/{cap}", endpoints.private, methods=["GET", "PUT", "DELETE"]),
        # Raw ASGI callables: they see receive() directly (held polls watch it for disconnects).
        Route("/reversehttp/r/{cap}", _REQUEST_URL),
        Route("/relay/{name}", _PUBLIC),
        Route("/relay/{name}/{path:path}", _PUBLIC),
    ]
