"""uvicorn's httptools protocol, with the writes of one event-loop iteration sent as one.

uvicorn writes a response's head when the app sends ``http.response.start`` and its body when the
app sends ``http.response.body``: two ``send()`` system calls for every small response, and on a
loopback or LAN connection each one wakes the peer. A relayed request is three responses (to the
requester, to the poll, to the reply POST), so half the server's time went into the kernel's
``write`` (bench/relay_throughput.py, py-spy). :class:`CoalescingTransport` holds what is written
during one turn of the event loop and hands it to the real transport in one ``writelines`` (one
``writev`` under uvloop) at the next turn; HTTP parsing and framing stay uvicorn's.

What the real transport promises still holds:

- order: every byte goes through the one buffer, in the order written;
- flow control: once ``HIGH_WATER_LIMIT`` bytes are held they are written at once, so the real
  transport sees a slow reader and pauses the protocol (uvicorn's ``send`` then waits to drain)
  exactly as without us; a body that big is not held at all;
- ``close()`` and ``write_eof()`` write what is held first (``Connection: close``, errors, the
  keep-alive timeout); ``abort()`` and a lost connection drop it, as the real transport does.

It also tells a held request that its connection is gone without the request watching for it.
ASGI says so only through ``receive()``, so a held poll would need a task of its own just to wait
for ``http.disconnect``: with thousands of polls held, that task and its chain of coroutines were
a fifth of each poll's objects, which the cyclic collector walks again and again. Every request's
scope carries the connection's :class:`~reversehub.core.connection.OnLost`.

And it bounds what a connection may cost before its request reaches the app (:class:`ListenerLimits`,
docs/security.md, "Connections"). httptools has no limit of its own: it keeps a header field
that has not ended in memory however long it grows, and uvicorn waits for a request head however
slowly it trickles in, so one client could hold a gigabyte with one header, or every connection the
process can open with a byte every few seconds on each (slowloris). Here:

- a request head (request line and header fields) larger than ``max_head_size`` bytes is answered
  431; the bytes that are not body between chunks (chunk sizes, trailers) are bounded the same way;
- a request head that has not ended ``head_timeout`` seconds after its first byte is answered 408,
  and a new connection that sends nothing is closed after uvicorn's ``timeout_keep_alive``, as an
  idle keep-alive connection already is;
- past ``max_connections`` open connections a new one is answered 503 with ``Retry-After`` at once.

Each refusal closes the connection. It first sends its answer and shuts down writing, then reads and
drops what the client still sends for :data:`LINGER` seconds: closing a socket with unread bytes
makes the kernel reset the connection, and the client would lose the answer (RFC 9112 9.6).
"""

from __future__ import annotations

import asyncio
import http
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from reversehub.core.connection import ON_LOST, RAW_HEADER_NAMES, OnLost
from reversehub.core.takeover import TAKEN_OVER, TAKEOVER

logger = logging.getLogger(__name__)

# Request header names on_header looks out for.
_NOTED = frozenset([b"expect", b"x-forwarded-for", b"x-forwarded-proto"])
# Seconds a refused connection is still read (and what arrives dropped) after its answer.
LINGER = 1.0
# At most one warning this often (seconds) that connections are refused for the cap.
CAP_WARNING_INTERVAL = 60.0


@dataclass(frozen=True)
class ListenerLimits:
    """What one connection may cost before its request reaches the app."""

    head_timeout: float = 10.0  # seconds from the first byte of a request head to its end (408)
    max_head_size: int = 64 * 1024  # bytes of a request head (431)
    max_connections: int = 0  # open connections of this server; 0: no cap (503 past it)


class ListenerConfig(uvicorn.Config):
    """uvicorn's ``Config`` with the :class:`ListenerLimits` that :class:`CoalescingHttpToolsProtocol`
    applies (under a plain ``Config`` it applies the defaults, with no connection cap).

    uvicorn's h11 protocol, which serves when httptools is missing, bounds a head by its
    ``h11_max_incomplete_event_size`` (answering 400): it is set to ``max_head_size`` too.
    """

    def __init__(self, app: Any, *, limits: ListenerLimits, **kwargs: Any) -> None:
        kwargs.setdefault("h11_max_incomplete_event_size", limits.max_head_size)
        super().__init__(app, **kwargs)
        self.limits = limits
        self.cap_warned_at = -math.inf


DEFAULT_LIMITS = ListenerLimits()


class CoalescingTransport(asyncio.Transport):
    """A transport that gathers writes until the loop's next turn (or ``limit`` bytes)."""

    __slots__ = ("_transport", "_loop", "_held", "_size", "_limit")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, limit: int = HIGH_WATER_LIMIT):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0
        self._limit = limit

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if not held:
            if len(data) >= self._limit:
                self._transport.write(data)
                return
            self._loop.call_soon(self.flush)
        # Held past this call, so a mutable buffer the caller may reuse is copied.
        held.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        if self._size >= self._limit:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now (a no-op when nothing is, so a stale scheduled call is harmless)."""
        held = self._held
        if not held:
            return
        self._held = []
        self._size = 0
        if self._transport.is_closing():
            return  # the connection is gone (or going): the real transport would drop it too
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._size = 0
        self._transport.abort()

    def drop(self) -> None:
        """The connection is lost: nothing held can be sent any more."""
        self._held = []
        self._size = 0

    # Everything else is the real transport's.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` over a :class:`CoalescingTransport` (``Config(http=...)``),
    with an :class:`OnLost` in every request's scope and the :class:`ListenerLimits` of a
    :class:`ListenerConfig`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.on_lost = OnLost()
        config = self.config
        self._limits = config.limits if isinstance(config, ListenerConfig) else DEFAULT_LIMITS
        # A request head is awaited from the connection's start and after each request's end.
        self._awaiting_head = True
        self._head_started: float | None = None  # loop time of the pending head's first byte
        self._head_timer: asyncio.TimerHandle | None = None
        # Bytes fed to the parser that are not body since the last point at which the parser keeps
        # nothing of what came before (a head's or a chunk's end, a message's end): what it holds.
        self._unframed = 0
        self._body_fed = 0  # body bytes in the piece being fed
        self._restarted = False  # one of those points fell inside the piece being fed
        self._refused = False
        self._raw_names: list[bytes] = []  # set here so every instance has the same attributes
        self._idle_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # uvicorn's proxy-headers layer (``--forwarded-allow-ips``) changes nothing in a request
        # without X-Forwarded-For or X-Forwarded-Proto: such a request (from a client talking to
        # us directly, and every exchange of a relayed request) goes straight to the app beneath it.
        self._with_proxy_headers = self.app
        self._direct = self.app.app if type(self.app) is ProxyHeadersMiddleware else self.app
        self._forwarded = False
        cap = self._limits.max_connections
        over_cap = cap > 0 and len(self.connections) >= cap
        super().connection_made(CoalescingTransport(transport, self.loop))
        if over_cap:
            self._refuse_for_cap()
            return
        # A connection that never sends a byte costs what an idle keep-alive one does: it gets as long.
        self._idle_timer = self.loop.call_later(config.timeout_keep_alive, self._idle_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read, and drop
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._awaiting_head and self._head_started is None:
            self._head_started = self.loop.time()
        max_head = self._limits.max_head_size
        view: bytes | memoryview = data
        while True:
            # Fed in pieces of at most what the limit leaves, so that a head is refused at its first
            # byte past the limit, not after one whole read (up to 256 KiB) more has gone into the
            # parser. A head that has not ended when it reaches the limit can only pass it.
            room = max_head - self._unframed
            piece = view if len(view) <= room else memoryview(view)[:room]
            self._body_fed = 0
            self._restarted = False
            super().data_received(piece)  # type: ignore[arg-type]
            if self.transport.is_closing():
                return
            if self._restarted:
                # Where in the piece the parser restarted is not known: what follows it is counted
                # from the next piece on, so a head may pass the limit by at most one piece.
                self._unframed = 0
            else:
                self._unframed += len(piece) - self._body_fed
                if self._unframed >= max_head:
                    self._refuse(431, f"Request head larger than {max_head} bytes")
                    return
            if len(piece) == len(view):
                break
            view = memoryview(view)[len(piece) :]
            if self.parser.should_upgrade():
                break  # uvicorn drops the rest of a read that held an upgrade request
        if self._head_started is not None and self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_started + self._limits.head_timeout, self._head_timed_out)

    def on_message_begin(self) -> None:
        if self._head_started is None:  # a pipelined request began in the read that ended the one before
            self._head_started = self.loop.time()
        super().on_message_begin()
        self.scope[ON_LOST] = self.on_lost  # type: ignore[literal-required]
        self._raw_names = []
        self._forwarded = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, plus the name as the client wrote it and whether a proxy header came.
        self._raw_names.append(name)
        name = name.lower()
        # llhttp keeps trailing OWS, which RFC 9110 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name in _NOTED:
            if name == b"expect":
                if value.lower() == b"100-continue":
                    self.expect_100_continue = True
            else:
                self._forwarded = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.scope[RAW_HEADER_NAMES] = self._raw_names  # type: ignore[literal-required]
        self.scope[TAKEOVER] = self._take_over  # type: ignore[literal-required]
        self._awaiting_head = False
        self._head_started = None
        self._restarted = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        # uvicorn builds the request's cycle here: built as an ExactCycle (which adds to the
        # response head only), not re-classed afterwards, since an instance whose __class__ is
        # assigned loses CPython's fast attribute access for every one of uvicorn's lines.
        # The event loop runs nothing else during this call.
        httptools_impl.RequestResponseCycle = ExactCycle  # type: ignore[misc]
        self.app = self._with_proxy_headers if self._forwarded else self._direct
        try:
            super().on_headers_complete()
        finally:
            httptools_impl.RequestResponseCycle = RequestResponseCycle  # type: ignore[misc]

    def on_body(self, body: bytes) -> None:
        self._body_fed += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        """Parser callback: a chunk's size line has ended (or the trailers begin, after the last)."""
        self._restarted = True

    def on_chunk_complete(self) -> None:
        """Parser callback: a chunk (or the trailer section) has ended."""
        self._restarted = True

    def on_message_complete(self) -> None:
        self._awaiting_head = True
        self._restarted = True
        super().on_message_complete()
        # The whole body is in: read on. A lost connection shows only as EOF, which a transport
        # paused by a large body never reads, so a request that waits once its body is in (a
        # relayed request waiting for its reply) would not hear that its requester is gone. A
        # pipelined request pauses reading again.
        if not self.parser.should_upgrade():
            self.flow.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.drop()
        self._cancel_timers()
        super().connection_lost(exc)
        self.on_lost.fire()

    # Taking the connection over (PTTH) --------------------------------------------------------------
    def _take_over(self, head: bytes, factory: Callable[[], asyncio.Protocol]) -> asyncio.Protocol | None:
        """Write ``head`` and hand the connection to ``factory()``'s protocol (reversehub.core.takeover)."""
        transport = self.transport
        if transport.is_closing() or self.on_lost.lost:
            return None
        cycle = self.cycle
        if cycle is not None:
            cycle.scope[TAKEN_OVER] = True  # type: ignore[literal-required]
            # The endpoint returns without a response: uvicorn must neither answer 500 for it nor
            # arm the keep-alive timer, and whatever it would still write goes nowhere.
            cycle.disconnected = True
            cycle.keep_alive = False
        self._refused = True  # what the parser still holds is dropped, not parsed as requests
        self._cancel_timers()
        self._unset_keepalive_if_required()
        # No longer an HTTP connection of this server: its graceful shutdown does not wait for it
        # (the new owner closes it when the app shuts down).
        self.connections.discard(self)
        self.pipeline.clear()
        transport.write(head)
        if self.flow.read_paused:
            self.flow.resume_reading()
        protocol = factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return protocol

    def _unsupported_upgrade_warning(self) -> None:
        if self._get_upgrade() in (b"ptth", b"ptth/1.0"):
            return  # the request URL takes these over (relay.ptth); the request goes to the app
        super()._unsupported_upgrade_warning()

    # Timeouts and refusals ---------------------------------------------------------------------------
    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_started is None or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # We stopped reading (a pipelined request waits for the one before it): the delay is
            # ours, not the client's. Give it the whole time again.
            self._head_timer = self.loop.call_later(self._limits.head_timeout, self._head_timed_out)
            return
        self._refuse(408, f"Request head not received within {self._limits.head_timeout:g} s")

    def _refuse_for_cap(self) -> None:
        config = self.config
        now = self.loop.time()
        if isinstance(config, ListenerConfig) and now - config.cap_warned_at >= CAP_WARNING_INTERVAL:
            config.cap_warned_at = now
            logger.warning(
                "%d connections open (--max-connections): new connections are answered 503",
                self._limits.max_connections,
            )
        self._refuse(503, "Too many open connections", retry_after=1)

    def _refuse(self, status: int, reason: str, retry_after: int | None = None) -> None:
        """Answer ``status`` with ``reason`` and close the connection (after :data:`LINGER`).

        A response already under way (to a request before the one refused) cannot be followed by
        another: the connection is closed without one.
        """
        self._refused = True
        self._cancel_timers()
        logger.debug("%s: %d %s", self.client, status, reason)
        transport = self.transport
        if self.cycle is not None and not self.cycle.response_complete:
            transport.close()
            return
        body = reason.encode("ascii") + b"\n"
        head = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode("ascii"))]
        head += [b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers]
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        head.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        transport.write(b"".join([*head, body]))
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER, transport.close)

    def _cancel_timers(self) -> None:
        for timer in (self._idle_timer, self._head_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._head_timer = self._linger_timer = None


_REASON = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")  # RFC 9112 4: HTAB, SP, VCHAR, obs-text
# uvicorn's own checks (httptools_impl.HEADER_RE, HEADER_VALUE_RE), run once over all names and
# once over all values of a head: a character refused in one of them is refused in their concatenation.
_NAME_REFUSED = httptools_impl.HEADER_RE
_VALUE_REFUSED = httptools_impl.HEADER_VALUE_RE
_STATUS_LINE = httptools_impl.STATUS_LINE
_NO_BODY = (204, 304)


class ExactCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, with a response head written as the app gave it.

    ReverseHttp relays an application's response as the application wrote it, and its original
    clients look ``Link`` up case-sensitively: so header names keep their case, a ``reason`` key in
    ``http.response.start`` is the status line's reason phrase (``299 Custom Reason``), and the
    server's ``Date`` and ``Server`` are left out when the app sends its own (one of each).

    :meth:`send` is uvicorn's, line for line in what it decides (the refusal of a name or value
    with a character RFC 9110 forbids, Content-Length and chunked framing, ``Connection: close``
    when the connection is not kept alive, no body for HEAD, 204 and 304), but writes the head
    directly: every response of a relayed request (the requester's, the poll's, the reply's) has
    names with capitals, and writing uvicorn's head and then rewriting it cost more than uvicorn's
    head itself.
    """

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self._write_head(message)
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            self._write_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")

    def _write_head(self, message: Any) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        status: int = message["status"]
        headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status,
            )
        reason = message.get("reason")
        if isinstance(reason, bytes) and _REASON.match(reason):
            content = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        else:
            content = [_STATUS_LINE[status]]
        lowered = [name.lower() for name, _ in headers]
        defaults = self.default_headers
        if b"date" in lowered or b"server" in lowered:
            defaults = [(k, v) for k, v in defaults if k not in lowered]
        for name, value in defaults:
            content += (name, b": ", value, b"\r\n")
        has_connection_close = False
        for (name, value), lower in zip(headers, lowered, strict=True):
            if lower == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif lower == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif lower == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    has_connection_close = True
            content += (name, b": ", value, b"\r\n")
        if headers:
            if _NAME_REFUSED.search(b"".join(lowered)):
                raise RuntimeError("Invalid HTTP header name.")
            if _VALUE_REFUSED.search(b"".join([value for _, value in headers])):
                raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in _NO_BODY:
            self.chunked_encoding = True  # neither Content-Length nor Transfer-Encoding given
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))

    def _write_body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            self.transport.write(b"".join(content))
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self.transport.write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()
