"""The intent-verification GET (W3C WebSub 5.3): the callback's status and the start of its body.

Only a 2xx whose body is exactly the challenge verifies, so no more than one byte past the
challenge's length is kept: a callback that answers with a huge body costs the hub nothing.
A callback on our own relay is answered in-process (:class:`reversehub.core.outbound.OwnRelay`):
a mass subscription of relay names verifies thousands of them.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from reversehub.core.outbound import Outbound, OutboundError


class Unanswered(Exception):
    """The GET failed: no connection, a timeout, or an app that raised or never responded."""


def with_params(callback: str, params: dict[str, str]) -> str:
    """``callback`` with ``params`` added to its query. The callback's own query stays as it was
    written (5.3: the hub keeps it); a parameter of the same name is replaced, as httpx's
    ``copy_merge_params`` would (the rare path: parsing the URL is not needed otherwise)."""
    parts = urlsplit(callback)
    if parts.query and any(k in params for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return str(httpx.URL(callback).copy_merge_params(params))
    added = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


async def ask(outbound: Outbound, url: str, timeout: float, limit: int) -> tuple[int, bytes]:
    """GET ``url``; returns the status and at most ``limit`` bytes of the body."""
    try:
        response = await outbound.request("GET", url, timeout=timeout, limit=limit)
    except OutboundError as exc:
        raise Unanswered(str(exc)) from exc
    return response.status, response.body
