"""Run an ASGI application on relayed requests: one HTTP scope per request, and its lifespan.

The relay hands us the request exactly as the requester sent it (ReverseHttp: "MUST NOT alter the
Request-URI"), so ``/relay/alice/items?x=1`` arrives whole. The scope carries it as uvicorn does
behind ``--root-path``: ``path="/relay/alice/items"`` and ``root_path="/relay/alice"``, so the app
routes on ``/items`` (Starlette strips the root path) and builds URLs under the prefix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from relay.wire import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _client(requesting_client: str | None) -> tuple[str, int] | None:
    if not requesting_client:
        return None
    host, _, port = requesting_client.rpartition(":")
    try:
        return (host.strip("[]"), int(port))
    except ValueError:
        return None


async def call_app(app: ASGIApp, request: HttpRequest, public_url: str, requesting_client: str | None) -> HttpResponse:
    """One request through ``app``; an app that fails before answering yields a 500."""
    public = urlsplit(public_url)
    root_path = public.path.rstrip("/")
    raw_path, _, query = request.target.partition("?")
    if raw_path.startswith(("http://", "https://")):  # absolute-form request target
        raw_path = urlsplit(raw_path).path or "/"
    path = unquote(raw_path)
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.version,
        "method": request.method.upper(),
        "scheme": public.scheme or "http",
        "path": path,
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": root_path,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers],
        "client": _client(requesting_client),
        "server": (public.hostname or "", public.port or (443 if public.scheme == "https" else 80)),
        "state": {},
    }
    body_sent = False
    done = asyncio.Event()
    status: int | None = None
    headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers.extend((bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in message["headers"])
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    except Exception:
        logger.exception("ASGI application failed on %s %s", request.method, path)
        if status is None:
            return HttpResponse(500, [("content-type", "text/plain")], b"Internal Server Error\n")
    finally:
        done.set()
    if status is None:
        return HttpResponse(500, [("content-type", "text/plain")], b"Internal Server Error\n")
    return HttpResponse(status, headers, b"".join(chunks))


class Lifespan:
    """Drives an app's ASGI lifespan (startup before serving, shutdown after), if it has one."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failed: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failed is not None:
            raise RuntimeError(f"ASGI lifespan startup failed: {self._failed}")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped.wait()
        await self._task

    async def _run(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.failed":
                self._failed = str(message.get("message", ""))
            if kind.startswith("lifespan.startup"):
                self._started.set()
            if kind.startswith("lifespan.shutdown"):
                self._stopped.set()

        try:
            await self._app(scope, self._inbox.get, send)
        except Exception:
            # Apps without lifespan support raise on the unknown scope type: the ASGI spec says to
            # carry on without it.
            logger.debug("ASGI app has no lifespan", exc_info=True)
        finally:
            self._started.set()
            self._stopped.set()
