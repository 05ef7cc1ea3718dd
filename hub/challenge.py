"""The intent-verification GET (W3C WebSub 5.3): the callback's status and the start of its body.

Only a 2xx whose body is exactly the challenge verifies, so no more than one byte past the
challenge's length is kept: a callback that answers with a huge body costs the hub nothing.

A callback on our own relay is asked in-process, without httpx (:mod:`hub.inprocess`):
``services.http`` would serve it in-process too (through httpx's ASGITransport), but building and
parsing httpx requests costs more CPU than the relay's own work, and a mass subscription of relay
names verifies thousands of them.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from hub import inprocess
from hub.local import own_app


class Unanswered(Exception):
    """The GET failed: no connection, a timeout, or an app that raised or never responded."""


def with_params(callback: str, params: dict[str, str]) -> str:
    """``callback`` with ``params`` added to its query. The callback's own query stays as it was
    written (5.3: the hub keeps it); a parameter of the same name is replaced, as httpx's
    ``copy_merge_params`` would (that is also the rare path here: it costs ten times more)."""
    parts = urlsplit(callback)
    if parts.query and any(k in params for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return str(httpx.URL(callback).copy_merge_params(params))
    added = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


async def ask(http: httpx.AsyncClient, url: str, timeout: float, limit: int, *, own: bool) -> tuple[int, bytes]:
    """GET ``url``; returns the status and at most ``limit`` bytes of the body. ``own``: the URL is
    on our public origin (:meth:`hub.netguard.NetGuard.is_own`), so the app itself can answer it."""
    app = own_app(http) if own and url.isascii() else None  # httpx percent-encodes the rest
    if app is not None:
        try:
            return await inprocess.request(app, "GET", url, timeout=timeout, limit=limit)
        except inprocess.NoResponse as exc:
            raise Unanswered(str(exc)) from exc
    try:
        async with http.stream("GET", url, timeout=timeout) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= limit:
                    break
            return response.status_code, bytes(body[:limit])
    except httpx.HTTPError as exc:
        raise Unanswered(_reason(exc)) from None


def _reason(exc: httpx.HTTPError) -> str:
    """What went wrong, for the log: the error's class, and the certificate check's own words when
    that is what failed (as the delivery sender reports it). Never the message of any other error,
    which may carry the callback's URL."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"{type(exc).__name__}: certificate not verified ({cause.verify_message})"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__
