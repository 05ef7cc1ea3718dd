"""Deliveries to our own relay, handed straight to the app: no socket, no HTTP client.

``services.http`` already serves requests to our public origin in-process (through httpx's
ASGITransport), but building and parsing httpx requests costs far more than the relay's own work
(measured: about a millisecond of CPU per request). Here the outbox calls the ASGI app directly
through :mod:`hub.inprocess`, with the scope a server would build, so the relay's semantics are
unchanged (no poller: 504 after ``--unavailable-timeout``; unknown name: 404). Given the relay's
own entry for such a POST (``here``), the outbox skips even the ASGI call: the relay builds the
``message/http`` request itself and answers with the reply's status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from starlette.types import ASGIApp

from hub import inprocess
from reversehub.core.transport import OwnOriginTransport


class SendFailed(Exception):
    """The app raised or never started a response."""


def own_transport(http: httpx.AsyncClient) -> OwnOriginTransport | None:
    """``services.http``'s transport when it is ours (httpx offers no public accessor for it)."""
    transport = getattr(http, "_transport", None)
    return transport if isinstance(transport, OwnOriginTransport) else None


def own_app(http: httpx.AsyncClient) -> ASGIApp | None:
    """The app behind ``services.http``'s in-process transport, when it has one."""
    transport = own_transport(http)
    return transport.app if transport is not None else None


# The relay's own entry for such a POST (relay.endpoints.post_here, given by the composition root):
# the reply's status, or None for a URL it does not serve.
PostHere = Callable[[str, dict[str, str], bytes], Awaitable[int | None]]


async def post(
    app: ASGIApp, url: str, headers: dict[str, str], body: bytes, timeout: float, here: PostHere | None = None
) -> int:
    """POST ``body`` to ``url`` on ``app`` (through ``here`` when given); returns the response status."""
    if here is not None:
        try:
            async with asyncio.timeout(timeout):
                status = await here(url, headers, body)
        except TimeoutError:
            raise SendFailed("timed out") from None
        except Exception as exc:
            raise SendFailed(type(exc).__name__) from exc
        if status is not None:
            return status
    try:
        status, _ = await inprocess.request(app, "POST", url, headers=headers, body=body, timeout=timeout)
    except inprocess.NoResponse as exc:
        raise SendFailed(str(exc)) from exc.__cause__
    return status
