"""Outbound HTTP that short-cuts requests to our own public origin into the app itself.

A subscriber whose callback is one of our relay URLs is reached without a socket: the hub simply
POSTs, and this transport hands the request to the ASGI app, which relays it to the poller. Every
other URL goes out through the real transport.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.types import ASGIApp

# Says whether a URL is one of our relay's public URLs (relay.routes.RelayUrls.addresses, handed
# down by the composition root): with host-based names they are on hosts other than our origin's.
OwnRelayUrl = Callable[[str], object | None]


class OwnOriginTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        app: ASGIApp,
        origin: str,
        outbound: httpx.AsyncBaseTransport,
        own_relay: OwnRelayUrl | None = None,
    ) -> None:
        self._own = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
        url = httpx.URL(origin)
        self._scheme, self._host, self._port = url.scheme, url.host, url.port
        self._outbound = outbound
        self._own_relay = own_relay

    @property
    def app(self) -> ASGIApp:
        """The app that serves requests to our own origin."""
        return self._own.app

    @property
    def outbound(self) -> httpx.AsyncBaseTransport:
        """The transport for every other URL (the real network unless a test injected one)."""
        return self._outbound

    def is_own(self, url: httpx.URL) -> bool:
        if (url.scheme, url.host, url.port) == (self._scheme, self._host, self._port):
            return True
        return self._own_relay is not None and self._own_relay(str(url)) is not None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.is_own(request.url):
            return await self._own.handle_async_request(request)
        return await self._outbound.handle_async_request(request)

    async def aclose(self) -> None:
        await self._outbound.aclose()
