"""How an endpoint takes a connection over from the HTTP server (PTTH, relay.ptth).

``reversehub serve``'s HTTP protocol (:mod:`reversehub.server.protocol`) puts a :data:`TAKEOVER`
callable in every request's scope. An endpoint that accepts an upgrade calls it with the bytes of
the ``101 Switching Protocols`` response and a factory for the protocol that owns the connection from
then on. The server writes those bytes, stops being the connection's HTTP server (no response, no
keep-alive timer, no part in its graceful shutdown) and hands the transport to the new protocol,
whose ``connection_made`` it calls. It returns that protocol, or None when the connection is already
gone. Under another server the key is absent and the endpoint serves the request as HTTP.

This module imports nothing, so the relay can use it without importing uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

TAKEOVER = "reversehub.takeover"
# Set (True) in the scope of a request whose connection was taken over: its answer was the 101.
TAKEN_OVER = "reversehub.taken_over"


class Takeover(Protocol):
    def __call__(
        self, head: bytes, factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.Protocol | None: ...  # pragma: no cover
