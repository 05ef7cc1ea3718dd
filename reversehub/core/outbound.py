"""The one seam for outbound HTTP: deliveries, verification GETs, topic fetches.

Everything the server sends goes through an :class:`Outbound`, chosen once by the composition root
(``reversehub.server.app.create_app``) and found on ``services.outbound``:

- :class:`OwnRelay` serves URLs our own relay answers in-process (no socket, no HTTP client), and
  hands every other URL to the network side. Which URLs are "our own" is one injected callable
  (:func:`same_origin` by default), the same one the SSRF guard and the outbox's fairness ask.
- :class:`LeanOutbound` is the network side of a real server: deliveries (POSTs whose response
  matters only by its status) go through the lean h11 client (:mod:`reversehub.core.sender`),
  everything else through httpx. Both connect only where :class:`reversehub.core.egress.Egress`
  allows, to the address it judged (the SSRF guard that holds against DNS rebinding).
- :class:`HttpxOutbound` sends everything through an ``httpx.AsyncClient``, whatever its transport:
  tests give it an ``httpx.MockTransport`` or an ``ASGITransport`` over a fake peer.

Tests may also inject an implementation of their own that records or answers requests. Every
implementation reports a failed exchange (no connection, a timeout, a malformed response, an app
that raised) as :class:`OutboundError`, whose message is safe to log: never the URL, which may
carry a subscriber's token.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from starlette.types import ASGIApp

from reversehub.core import inprocess
from reversehub.core.egress import Egress, EgressTransport, Refused
from reversehub.core.sender import Sender, SendError

__all__ = [
    "HttpxOutbound",
    "LeanOutbound",
    "Outbound",
    "OutboundError",
    "OwnRelay",
    "PostHere",
    "Response",
    "own_urls",
    "same_origin",
]

# A delivery's response matters only by its status: past this much of its body the rest is dropped.
MAX_RESPONSE_READ = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class OutboundError(Exception):
    """The request could not be sent or its response not read. The message names what went wrong,
    never the URL."""


@dataclass(frozen=True)
class Response:
    """A response's status, header fields and the start of its body (as much as was asked for)."""

    status: int
    raw_headers: Sequence[tuple[bytes, bytes]]
    body: bytes

    @functools.cached_property
    def headers(self) -> httpx.Headers:
        """The header fields, case-insensitive (built on first use: most callers need only the status)."""
        return httpx.Headers(list(self.raw_headers))

    @property
    def is_redirect(self) -> bool:
        return self.status in _REDIRECTS and "location" in self.headers


class Outbound(Protocol):
    """Outbound HTTP. Redirects are never followed: a caller that follows them checks each hop."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout: float,
        limit: int,
    ) -> Response:
        """Send one request; the response keeps at most ``limit`` bytes of its body (the rest is not read)."""
        ...

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        """POST ``body`` (a delivery) and return the response's status; its body is read and dropped."""
        ...


def same_origin(origin: str) -> Callable[[str], bool]:
    """The default rule for "a URL our own relay serves": any URL on our public ``origin``."""
    prefix = origin + "/"

    def is_own(url: str) -> bool:
        return url == origin or url.startswith(prefix)

    return is_own


def own_urls(origin: str, relay_urls: Callable[[str], object | None]) -> Callable[[str], bool]:
    """Any URL on our public ``origin``, and any other that ``relay_urls`` answers (not None) for:
    the relay's host-based public URLs are on hosts of their own (``--relay-domain``)."""
    on_origin = same_origin(origin)

    def is_own(url: str) -> bool:
        return on_origin(url) or relay_urls(url) is not None

    return is_own


# The relay's own entry for a POST to one of its public URLs (relay.endpoints.post_here, bound by the
# composition root): the reply's status, or None for a URL it does not serve.
PostHere = Callable[[str, dict[str, str], bytes], Awaitable[int | None]]


class OwnRelay:
    """URLs ``is_own`` accepts go to ``app`` in-process; every other URL goes to ``network``.

    A POST is first offered to ``post_here`` (set once the relay is built): the relay queues it for
    its poller without an HTTP request or an ASGI call being built around it. The relay's answers
    are what a requester on the network would get (no poller: 504 after ``--unavailable-timeout``;
    unknown name: 404).
    """

    def __init__(
        self, app: ASGIApp, is_own: Callable[[str], bool], network: Outbound, post_here: PostHere | None = None
    ) -> None:
        self.app = app
        self.is_own = is_own
        self.network = network
        self.post_here = post_here

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout: float,
        limit: int,
    ) -> Response:
        if not self.is_own(url):
            return await self.network.request(method, url, headers=headers, body=body, timeout=timeout, limit=limit)
        return await self._in_process(method, url, headers, body, timeout, limit)

    async def _in_process(
        self, method: str, url: str, headers: Mapping[str, str] | None, body: bytes, timeout: float, limit: int
    ) -> Response:
        try:
            status, raw, kept = await inprocess.request(
                self.app, method, _ascii(url), headers=dict(headers or {}), body=body, timeout=timeout, limit=limit
            )
        except inprocess.NoResponse as exc:
            raise OutboundError(str(exc)) from exc
        except UnicodeError:
            raise OutboundError("bad request: header not in Latin-1") from None
        return Response(status, raw, kept)

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        if not self.is_own(url):
            return await self.network.post(url, headers, body, timeout)
        here = self.post_here
        if here is not None:
            try:
                async with asyncio.timeout(timeout):
                    status = await here(url, headers, body)
            except TimeoutError:
                raise OutboundError("timed out") from None
            except Exception as exc:
                raise OutboundError(type(exc).__name__) from exc
            if status is not None:
                return status
        return (await self._in_process("POST", url, headers, body, timeout, limit=0)).status


class HttpxOutbound:
    """Every request through ``client`` (which must not follow redirects). ``connect_timeout``: at most
    this long to connect, within each request's timeout."""

    def __init__(self, client: httpx.AsyncClient, *, connect_timeout: float | None = None) -> None:
        self.client = client
        self.connect_timeout = connect_timeout

    def _timeout(self, timeout: float) -> httpx.Timeout:
        connect = timeout if self.connect_timeout is None else min(timeout, self.connect_timeout)
        return httpx.Timeout(timeout, connect=connect)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout: float,
        limit: int,
    ) -> Response:
        try:
            async with self.client.stream(
                method, url, headers=headers, content=body or None, timeout=self._timeout(timeout)
            ) as response:
                kept = bytearray()
                if limit > 0:
                    async for chunk in response.aiter_bytes():
                        kept += chunk
                        if len(kept) >= limit:
                            break
                return Response(response.status_code, response.headers.raw, bytes(kept[:limit]))
        except httpx.HTTPError as exc:
            raise OutboundError(reason(exc)) from exc

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        try:
            async with self.client.stream(
                "POST", url, content=body, headers=headers, timeout=self._timeout(timeout)
            ) as response:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > MAX_RESPONSE_READ:
                        break
                return response.status_code
        except httpx.HTTPError as exc:
            raise OutboundError(reason(exc)) from exc

    async def aclose(self) -> None:
        await self.client.aclose()


class LeanOutbound(HttpxOutbound):
    """Deliveries through ``sender`` (the lean h11 client), everything else through httpx's ``client``.
    Give both the same :class:`ssl.SSLContext`, so that the hub never verifies a callback it then
    cannot deliver to, nor delivers to one it could not verify."""

    def __init__(self, client: httpx.AsyncClient, sender: Sender, *, connect_timeout: float | None = None) -> None:
        super().__init__(client, connect_timeout=connect_timeout)
        self.sender = sender

    @classmethod
    def default(
        cls, timeout: float, *, egress: Egress | None = None, connect_timeout: float | None = None
    ) -> LeanOutbound:
        """The real network, trusting what httpx trusts (SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's
        bundle; OpenSSL's own defaults, ``ssl.create_default_context()``, trust otherwise). Every
        connection, httpx's and the sender's, goes only where ``egress`` allows (by default, private
        networks refused), to the address it judged."""
        tls: ssl.SSLContext = httpx.create_ssl_context()
        egress = egress if egress is not None else Egress()
        client = httpx.AsyncClient(
            transport=EgressTransport(egress, tls), timeout=httpx.Timeout(timeout), follow_redirects=False
        )
        sender = Sender(ssl_context=tls, egress=egress, connect_timeout=connect_timeout)
        return cls(client, sender, connect_timeout=connect_timeout)

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        try:
            return await self.sender.post(url, headers, body, timeout)
        except SendError as exc:
            raise OutboundError(str(exc)) from exc

    async def aclose(self) -> None:
        await self.sender.aclose()
        await super().aclose()


def reason(exc: httpx.HTTPError) -> str:
    """What went wrong, for the log: the error's class, the certificate check's own words when that is
    what failed, and why a destination was refused (as the lean sender reports them). Never the
    message of any other error, which may carry the URL."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, Refused):
            return f"refused: {cause}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"{type(exc).__name__}: certificate not verified ({cause.verify_message})"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _ascii(url: str) -> str:
    """``url`` percent-encoded where it is not ASCII (as httpx would send it), for the in-process call."""
    return url if url.isascii() else str(httpx.URL(url))
