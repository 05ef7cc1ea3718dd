"""The backend side of PTTH (draft-kazuho-ptth-ptth-00, "HTTP/1.1"): serve relayed requests on a
connection the backend opened itself.

The backend sends, on its request URL, ``GET`` with ``Connection: upgrade``, ``Upgrade: ptth`` and
``ALPN: http%2F1.1`` (RFC 7639: the HTTP versions it accepts on the transposed connection). A relay
that offers PTTH answers ``101 Switching Protocols`` with ``Upgrade: ptth`` and the ALPN it chose;
from then on the relay is the HTTP client on that connection: it writes requests (HTTP/1.1, possibly
pipelined) and the backend answers each, in order (RFC 9112 9.3.2).

A relay that does not offer PTTH (an older reversehub, or a server whose HTTP stack cannot take a
connection over) serves the same ``GET`` as the ordinary long poll it also is: its answer (200
``message/http``, 204, 404, 410) comes back as a :class:`PollAnswer`, and the caller carries on
long-polling. Trying PTTH first therefore costs nothing.

HTTP/1.1 on the transposed connection is parsed and written by h11 in the server role: it frames
responses to HEAD, 1xx, 204 and 304 (RFC 9112 6.3), and hands pipelined requests over one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import h11

from relay.wire import HttpRequest, HttpResponse, bodiless

logger = logging.getLogger(__name__)

UPGRADE = "ptth"
ALPN = "http%2F1.1"  # RFC 7639: the ALPN id "http/1.1", percent-encoded
READ_SIZE = 64 * 1024
# Bounds on what the relay may send us: a request head and a buffered body (our handlers take whole
# bodies, as on the long-poll path, whose relay bounds them the same way).
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
# TCP keep-alive on an idle transposed connection: NAT and stateful firewalls drop mappings idle for
# a few minutes, silently, and the relay could not reach the backend any more. Probes every 30 s
# keep the mapping and notice a dead peer within about a minute and a half.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 6

Serve = Callable[[HttpRequest, "str | None"], Awaitable[HttpResponse]]


class PtthError(Exception):
    """The upgrade could not be made, or the connection failed (network error, protocol error)."""


@dataclass(frozen=True)
class PollAnswer:
    """The relay answered the upgrade request as a plain poll: it does not offer PTTH here."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def proxied(url: str) -> bool:
    """True when the environment sends ``url`` through a proxy (``HTTP(S)_PROXY``, ``ALL_PROXY``,
    minus ``NO_PROXY``), as httpx would: a transposed connection cannot go through an HTTP proxy, so
    the endpoint long-polls through it instead."""
    proxies = urllib.request.getproxies_environment()
    scheme = urlsplit(url).scheme
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(urlsplit(url).hostname or "")


def _keepalive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, option):  # Linux; macOS has TCP_KEEPALIVE instead of TCP_KEEPIDLE
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5.0)
    except (TimeoutError, OSError, ssl.SSLError):
        pass


async def upgrade(
    url: str, *, ssl_context: ssl.SSLContext | None, connect_timeout: float, read_timeout: float
) -> PtthConnection | PollAnswer:
    """Ask for a transposed connection on request URL ``url``.

    Returns the :class:`PtthConnection` on ``101``, or the :class:`PollAnswer` of a relay that served
    the request as a poll (it may hold it up to its poll timeout, hence ``read_timeout``). Raises
    :class:`PtthError` on network and protocol errors."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.rpartition("@")[2]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=(ssl_context or ssl.create_default_context()) if https else None,
                server_hostname=host if https else None,
                limit=READ_SIZE,
            ),
            connect_timeout,
        )
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise PtthError(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from exc
    try:
        _keepalive(writer.get_extra_info("socket"))
        client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        headers = [
            ("Host", authority),
            ("Connection", "upgrade"),
            ("Upgrade", UPGRADE),
            ("ALPN", ALPN),
            # What a relay that answers as a poll should send (the long-poll path asks the same).
            ("Accept", "message/http"),
        ]
        writer.write(client.send(h11.Request(method="GET", target=target, headers=headers)))
        writer.write(client.send(h11.EndOfMessage()))
        outcome = await asyncio.wait_for(_handshake(client, reader), read_timeout)
    except (TimeoutError, OSError, ssl.SSLError, h11.ProtocolError) as exc:
        await _close(writer)
        raise PtthError(f"PTTH upgrade failed: {exc or type(exc).__name__}") from exc
    except BaseException:
        await _close(writer)
        raise
    if isinstance(outcome, PollAnswer):
        await _close(writer)
        return outcome
    return PtthConnection(reader, writer, outcome)


async def _handshake(client: h11.Connection, reader: asyncio.StreamReader) -> bytes | PollAnswer:
    """The relay's answer: the bytes after a ``101`` (the start of the first request), or a poll."""
    status = 0
    headers: list[tuple[str, str]] = []
    body = bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await reader.read(READ_SIZE))
            continue
        if isinstance(event, h11.InformationalResponse):
            if event.status_code != 101:
                continue  # 100 Continue and the like: the answer is still to come
            fields = {name.lower(): value for name, value in event.headers}
            upgrade = fields.get(b"upgrade", b"")
            if upgrade.strip().lower() != UPGRADE.encode():
                raise h11.RemoteProtocolError(f"101 for another protocol: {upgrade!r}")
            chosen = fields.get(b"alpn", b"").strip()
            if chosen.lower() != ALPN.lower().encode():
                raise h11.RemoteProtocolError(f"the relay chose ALPN {chosen!r}; we offered only {ALPN}")
            data, _closed = client.trailing_data
            return bytes(data)
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()]
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("poll answer too large")
        elif isinstance(event, h11.EndOfMessage):
            return PollAnswer(status, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("connection closed during the handshake")


class PtthConnection:
    """A transposed connection: the relay writes requests, we answer them in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if data:
            self._h11.receive_data(data)
        self.served = 0

    async def serve(
        self,
        handle: Serve,
        *,
        closing: Callable[[], bool] = lambda: False,
        written: Callable[[HttpRequest, bool], None] = lambda request, ok: None,
    ) -> None:
        """Answer requests until the relay closes the connection or ``closing()`` becomes true
        (checked after each response: the request in hand is answered first). ``written(request,
        ok)`` hears whether each response was written. Raises :class:`PtthError` when the
        connection fails."""
        try:
            while not closing():
                request = await self._next_request()
                if request is None:
                    return
                response = await handle(request, request.header("requesting-client"))
                last = closing()
                try:
                    await self._respond(response, request.method, last)
                except BaseException:
                    written(request, False)
                    raise
                written(request, True)
                self.served += 1
                if last or self._h11.our_state is h11.MUST_CLOSE:
                    return
                self._h11.start_next_cycle()
        except (OSError, ssl.SSLError) as exc:
            raise PtthError(f"PTTH connection lost: {exc or type(exc).__name__}") from exc
        except h11.RemoteProtocolError as exc:
            # A request we cannot read: answer 400 if the state allows it, then give up on the connection.
            await self._refuse(exc)
            raise PtthError(f"the relay sent an invalid request: {exc}") from exc
        finally:
            await _close(self._writer)

    async def aclose(self) -> None:
        await _close(self._writer)

    async def _next_request(self) -> HttpRequest | None:
        """The next whole request (head and body), or None once the relay closed the connection."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(READ_SIZE)
                self._h11.receive_data(data)
                if not data and request is None and self._h11.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return HttpRequest(
                    method=request.method.decode("ascii"),
                    target=request.target.decode("latin-1"),
                    headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw_items()],
                    body=bytes(body),
                    version=request.http_version.decode("ascii"),
                )
            elif event is h11.PAUSED:
                raise h11.RemoteProtocolError("h11 paused outside a response")  # not reached: we answer first

    async def _respond(self, response: HttpResponse, method: str, last: bool) -> None:
        """Write ``response`` to the request ``method``: framing by h11 (HEAD, 204 and 304 carry no
        body, RFC 9112 6.3), a ``Content-Length`` where the handler gave none, ``Connection: close``
        on the last response before we close (RFC 9112 9.6: the relay knows that requests written
        after it were not processed)."""
        no_body = bodiless(response.status, method)
        names = {k.lower() for k, _ in response.headers}
        headers: list[tuple[str, str]] = []
        for key, value in response.headers:
            if key.lower() == "content-length" and not no_body:
                continue  # written below from the body itself: a wrong one would desynchronise the connection
            if key.lower() == "connection" and last:
                continue
            headers.append((key, value))
        if "transfer-encoding" not in names and (
            not no_body or (method == "HEAD" and response.status not in (204, 304) and "content-length" not in names)
        ):
            # For HEAD, the length of the body the handler made, which GET would have sent.
            headers.append(("Content-Length", str(len(response.body))))
        if last:
            headers.append(("Connection", "close"))
        reason = response.reason or _phrase(response.status)
        try:
            head = self._h11.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        except h11.LocalProtocolError as exc:
            logger.warning("handler answered an invalid response (%s): sending 500 instead", exc)
            fallback = [("Content-Type", "text/plain"), ("Content-Length", "22")]
            if last:
                fallback.append(("Connection", "close"))
            head = self._h11.send(h11.Response(status_code=500, headers=fallback, reason="Internal Server Error"))
            response = HttpResponse(500, [], b"Internal Server Error\n")
        parts = [head]
        if response.body and not no_body:
            parts.append(self._h11.send(h11.Data(data=response.body)) or b"")
        parts.append(self._h11.send(h11.EndOfMessage()) or b"")
        self._writer.write(b"".join(parts))
        await self._writer.drain()

    async def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            status = exc.error_status_hint
            body = f"{_phrase(status)}\n".encode()
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")]
            self._writer.write(self._h11.send(h11.Response(status_code=status, headers=headers)) or b"")
            self._writer.write(self._h11.send(h11.Data(data=body)) or b"")
            self._writer.write(self._h11.send(h11.EndOfMessage()) or b"")
            await self._writer.drain()
        except (OSError, ssl.SSLError, h11.ProtocolError):
            pass


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
