"""One HTTP request handed straight to an ASGI app: no socket, no HTTP client.

The scope is the one a server would build, so the app cannot tell the difference; ``receive``
keeps the connection open until the response is complete, as a live client would. The client
address is :data:`~reversehub.core.contracts.IN_PROCESS_CLIENT`, by which the relay and the limits
know a request the server makes to itself. Plain asyncio (an event, ``asyncio.timeout``): this runs
once per request, and anyio's equivalents cost more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from starlette.types import ASGIApp, Message

from reversehub.core.contracts import IN_PROCESS_CLIENT


class NoResponse(Exception):
    """The app raised, timed out or never started a response."""


async def request(
    app: ASGIApp,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float,
    limit: int = 0,
) -> tuple[int, Sequence[tuple[bytes, bytes]], bytes]:
    """``method`` ``url`` (ASCII: percent-encoded) on ``app``; returns the status, the response's
    header fields and the first ``limit`` bytes of its body."""
    parts = urlsplit(url)
    raw_headers = [(b"host", parts.netloc.encode("latin-1"))]
    if body or method not in ("GET", "HEAD"):
        raw_headers.append((b"content-length", str(len(body)).encode()))
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    path = parts.path or "/"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": parts.scheme,
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": parts.query.encode("latin-1"),
        "root_path": "",
        "headers": raw_headers,
        "client": IN_PROCESS_CLIENT,
        "server": (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)),
        "state": {},
    }
    complete = asyncio.Event()
    requested = False
    status: int | None = None
    response_headers: Sequence[tuple[bytes, bytes]] = ()
    kept = bytearray()

    async def receive() -> Message:
        nonlocal requested
        if requested:
            await complete.wait()
            return {"type": "http.disconnect"}
        requested = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status, response_headers
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            response_headers = message.get("headers", ())
        elif kind == "http.response.body":
            if len(kept) < limit:
                kept.extend(message.get("body", b"")[: limit - len(kept)])
            if not message.get("more_body", False):
                complete.set()

    try:
        async with asyncio.timeout(timeout):
            await app(scope, receive, send)
    except TimeoutError:
        raise NoResponse("timed out") from None
    except Exception as exc:
        raise NoResponse(type(exc).__name__) from exc
    finally:
        complete.set()
    if status is None:
        raise NoResponse("no response")
    return status, response_headers, bytes(kept)
