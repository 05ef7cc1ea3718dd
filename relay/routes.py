"""The relay's URL space (DESIGN.md "URL layout")."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from relay import endpoints


class _Asgi:
    """Starlette treats a non-function endpoint as an ASGI app and passes every method to it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def routes() -> list[BaseRoute]:
    public = _Asgi(endpoints.public)
    return [
        Route("/reversehttp", endpoints.gateway, methods=["GET", "POST"]),
        Route("/reversehttp/p/{cap}", endpoints.private, methods=["GET", "PUT", "DELETE"]),
        # Raw ASGI callables: they see receive() directly (held polls watch it for disconnects).
        Route("/reversehttp/r/{cap}", _Asgi(endpoints.request_url)),
        Route("/relay/{name}", public),
        Route("/relay/{name}/{path:path}", public),
    ]
