"""Deliveries to our own relay, handed straight to the app: no socket, no HTTP client.

``services.http`` already serves requests to our public origin in-process (through httpx's
ASGITransport), but building and parsing httpx requests costs far more than the relay's own work
(measured: about a millisecond of CPU per request). Here the outbox calls the ASGI app directly
with a plain scope, the same one a server would build, so the relay's semantics are unchanged (no
poller: 504 after ``--unavailable-timeout``; unknown name: 404). The request's ``receive`` keeps
the connection open until the response is complete, as a live client would, and the client
address is the one :mod:`reversehub.transport` gives in-process requests.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote, urlsplit

import httpx
from starlette.types import ASGIApp, Message

from reversehub.transport import OwnOriginTransport

IN_PROCESS_CLIENT = ("127.0.0.1", 0)


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


async def post(app: ASGIApp, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
    """POST ``body`` to ``url`` on ``app``; returns the response status."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    raw_headers = [(b"host", parts.netloc.encode("latin-1")), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": parts.scheme,
        "path": unquote(parts.path or "/"),
        "raw_path": (parts.path or "/").encode("latin-1"),
        "query_string": parts.query.encode("latin-1"),
        "root_path": "",
        "headers": raw_headers,
        "client": IN_PROCESS_CLIENT,
        "server": (parts.hostname or "", port),
        "state": {},
    }
    done = asyncio.Event()  # plain asyncio: cheaper than anyio's, and this runs per delivery
    sent_body = False
    status: int | None = None

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    try:
        async with asyncio.timeout(timeout):  # plain asyncio: an anyio scope per delivery costs more
            await app(scope, receive, send)
    except TimeoutError:
        raise SendFailed("timed out") from None
    except Exception as exc:
        raise SendFailed(type(exc).__name__) from exc
    finally:
        done.set()
    if status is None:
        raise SendFailed("no response")
    return status
