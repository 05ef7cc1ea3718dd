"""One log line per request, with capability URLs and query strings left out.

uvicorn's own access log is off (cli.py): it would write request URLs, and ours carry capabilities
(private URLs, request URLs) and subscribers' secrets may sit in query strings.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reversehub.core.takeover import TAKEN_OVER

logger = logging.getLogger("reversehub.access")

# A path segment that looks like a capability (long, from a token alphabet) is replaced by "…".
_CAPABILITY = re.compile(r"/[A-Za-z0-9_\-]{20,}")


def redact_path(path: str) -> str:
    return _CAPABILITY.sub("/…", path)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            if not status and scope.get(TAKEN_OVER):
                status = 101  # written by the server as it handed the connection over (PTTH)
            logger.info(
                "%s %s %s %d %.1fms",
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                redact_path(scope["path"]),
                status,
                (time.perf_counter() - start) * 1000,
            )
