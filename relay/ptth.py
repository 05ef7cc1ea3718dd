"""PTTH: an application's own connection, turned around, as a transport of its registration.

Two handshakes, both on a registration's request URL (the capability is the credential, as for a
poll; docs/ptth.md):

- draft-kazuho-ptth-ptth-00 (HTTP/1.1 form): ``GET`` with ``Connection: upgrade``, ``Upgrade: ptth``
  and an ``ALPN`` header (RFC 7639) naming the versions the backend accepts. We speak ``http/1.1`` on
  the transposed connection (no h2): ``101`` with ``Connection: upgrade``, ``Upgrade: ptth``,
  ``ALPN: http%2F1.1``. An offer without ``http%2F1.1``, or without ``ALPN``, is refused with 400.
- PTTH/1.0 (Second Life, draft-lentczner-rhttp-00): ``GET`` or ``POST`` with ``Upgrade: PTTH/1.0``
  (with or without ``Connection: Upgrade``); ``101`` with ``Upgrade: PTTH/1.0``, ``Connection: Upgrade``.

After the ``101`` the relay is the HTTP/1.1 client on that connection: a :class:`PtthConnection` is a
consumer of the name's queue (``relay.q.{name}``, relay.queue) beside its long-poll pollers, so the
broker's arrival-order hand-over makes them share the name's requests round-robin, across processes
with the Redis broker. It writes each request as its requester sent it (the queued ``message/http``
bytes), up to ``ptth_pipeline`` at once (HTTP/1.1 pipelining, RFC 9112 9.3.2: responses come back in
order), and relays each response as the application wrote it.

What happens to requests when a connection ends:

- taken from the queue but not written: back to the front of the queue, in order (another consumer
  serves them);
- written after a response that said ``Connection: close``: the application must not have processed
  them (RFC 9112 9.6), so they go back to the front of the queue too;
- written and unanswered when the connection is lost or breaks the protocol: 502 to their requesters
  (they may have been processed; the relay does not send them twice).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import httptools
from prometheus_client import Gauge

from relay.errors import BadReply, BodyTooLarge, Busy, InvalidInput, NotFound
from relay.queue import Item, queue_key
from reversehub.core.broker import BrokerClosed, BrokerUnavailable
from reversehub.core.takeover import TAKEOVER, Takeover

if TYPE_CHECKING:
    from relay.service import Relay

logger = logging.getLogger(__name__)

DRAFT = "ptth"  # draft-kazuho-ptth-ptth-00
LEGACY = "PTTH/1.0"  # draft-lentczner-rhttp-00, Second Life
HTTP11 = "http/1.1"  # the ALPN protocol id we choose (RFC 7301), written percent-encoded (RFC 7639)

_DRAFT_101 = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n"
_LEGACY_101 = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n"

# TCP keep-alive on a PTTH connection (seconds, probes): an idle one behind a NAT or a stateful
# firewall is forgotten by it after a few minutes, and neither end would hear of it.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 4
# Bytes of a PTTH/1.0 POST handshake's body read (and dropped) before the 101.
MAX_HANDSHAKE_BODY = 64 * 1024


class Offer(NamedTuple):
    kind: str  # DRAFT or LEGACY
    head: bytes  # the 101 response


def offered(method: str, upgrade: str, alpn: str | None) -> Offer | None:
    """The PTTH upgrade a request on a request URL asks for, or None when its ``Upgrade`` names no
    PTTH; :class:`InvalidInput` (400) for a PTTH offer we cannot accept, saying why."""
    tokens = [token.strip().lower() for token in upgrade.split(",")]
    if "ptth/1.0" in tokens:
        if method not in ("GET", "POST"):
            raise InvalidInput("PTTH/1.0 upgrades a GET or a POST")
        return Offer(LEGACY, _LEGACY_101)
    if "ptth" not in tokens:
        return None
    if method != "GET":
        raise InvalidInput("PTTH (draft-kazuho-ptth-ptth) upgrades a GET")
    if alpn is None:
        raise InvalidInput(
            "PTTH needs an ALPN header (RFC 7639) listing the protocols offered; this relay speaks http%2F1.1"
        )
    protocols = [unquote(token.strip()).lower() for token in alpn.split(",")]
    if HTTP11 not in protocols:
        raise InvalidInput("no protocol in ALPN that this relay speaks on a PTTH connection: http%2F1.1 only (no h2)")
    return Offer(DRAFT, _DRAFT_101)


def keep_alive(transport: asyncio.BaseTransport) -> None:
    """Turn TCP keep-alive on for the connection (where the platform lets us)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    except OSError:  # not a TCP socket (a Unix socket in tests): nothing to keep alive
        pass


class _Invalid(Exception):
    """The application broke HTTP on its PTTH connection: its requests in flight get 502."""


class _Pending(NamedTuple):
    item: Item
    method: bytes


def _method(message: bytes) -> bytes:
    return message[: message.find(b" ")]


class PtthConnection(asyncio.Protocol):
    """One application connection after the 101: the relay writes requests, reads responses."""

    def __init__(self, pool: PtthPool, name: str, kind: str) -> None:
        self.pool = pool
        self.relay = pool.relay
        self.name = name
        self.kind = kind
        settings = self.relay.settings
        self.depth = max(1, settings.ptth_pipeline)
        self._max_headers = settings.max_header_count
        self._max_head = settings.max_header_size
        self._max_body = self.relay.reply_limit
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.in_flight: collections.deque[_Pending] = collections.deque()
        self.closed = False
        self._stopping = False  # take no more requests; close once those in flight are answered
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._held: bytes | None = None  # a request taken and not written yet (a HEAD's barrier)
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False  # the response in flight answers a HEAD (see data_received)
        self._head_buffer = b""
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._body: list[bytes] = []
        self._size = 0
        self._persist = True
        self._headers_done = False

    # The connection ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        keep_alive(transport)
        self.pool.add(self)
        self._task = self.loop.create_task(self._consume())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_done and self.in_flight and self._until_eof():
            # A response without framing ends where the connection does (RFC 9112 6.3 rule 8).
            self._complete()
        self._close("the application's PTTH connection was lost")

    def eof_received(self) -> bool | None:
        return None  # close our side too: nothing more can be answered

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            if self._head_only:
                self._feed_head_only(data)
            else:
                self._parser.feed_data(data)
        except _Invalid as exc:
            self._broken(str(exc))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _Invalid) else None
            self._broken(str(cause) if cause is not None else "invalid response")
        except httptools.HttpParserError as exc:
            self._broken(f"invalid response ({exc})")

    def _feed_head_only(self, data: bytes) -> None:
        """The response to a HEAD has no body whatever its Content-Length says (RFC 9110 9.3.2), and
        httptools cannot be told so: its head alone is fed to a parser of its own. Nothing else is in
        flight meanwhile (a HEAD is written only when nothing is), so the bytes are all its own."""
        buffer = self._head_buffer + data
        while self._head_only:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self._max_head + 1024:
                    raise _Invalid("response head too large")
                self._head_buffer = buffer
                return
            head, buffer = buffer[: end + 4], buffer[end + 4 :]
            parser = httptools.HttpResponseParser(self)
            parser.feed_data(head)  # an interim 1xx completes and the loop looks for the next head
            self._parser = parser
        self._head_buffer = b""
        self._parser = httptools.HttpResponseParser(self)
        if buffer:
            self._parser.feed_data(buffer)

    def _until_eof(self) -> bool:
        return not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in self._headers)

    # Parser callbacks (httptools) ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if not self.in_flight:
            raise _Invalid("a response to no request")
        self._reset()

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if len(self._headers) > self._max_headers or self._head_size > self._max_head:
            raise _Invalid("response headers too large")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101:
            raise _Invalid("101 on a PTTH connection")
        self._status = status
        self._headers_done = True
        self._persist = self._parser.should_keep_alive() or status < 200
        if self._head_only and status >= 200:
            self._head_only = False
            self._complete()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            raise _Invalid(f"response larger than {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200 or not self._headers_done:
            self._headers_done = False
            return  # an interim response (100 Continue, 103 Early Hints): the final one follows
        self._complete()

    # Responses -----------------------------------------------------------------------------------
    def _complete(self) -> None:
        pending = self.in_flight.popleft()
        self._headers_done = False
        head = pending.method == b"HEAD"
        lines = [b"HTTP/1.1 %d %s" % (self._status, self._reason.strip())]
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"transfer-encoding" or (lower == b"content-length" and not head):
                continue  # de-chunked; framed by the length of what was read
            lines.append(name + b": " + value)
        if not head:
            lines.append(b"Content-Length: %d" % self._size)
        lines += [b"", b""]
        body = self._body
        response = b"\r\n".join(lines) + (body[0] if len(body) == 1 else b"".join(body))
        self._body = []
        self.pool.answer(pending.item, response)
        if not self._persist:
            self._stop_after_close()
        elif self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._stopping and not self.in_flight:
            self._close("")

    def _stop_after_close(self) -> None:
        """The application said ``Connection: close`` (or spoke HTTP/1.0): it processes nothing
        after that response (RFC 9112 9.6), so what was written after it goes back to the queue."""
        unprocessed = [p.item for p in self.in_flight]
        self.in_flight.clear()
        self._requeue(unprocessed)
        self._close("")

    # Taking requests -----------------------------------------------------------------------------
    async def _consume(self) -> None:
        relay = self.relay
        dispatcher = relay.dispatcher
        broker = relay.broker
        name = self.name
        queue = queue_key(name)
        settings = relay.settings
        refresh = settings.poll_timeout / 2
        try:
            await dispatcher.mark_polling(name, relay.public_url(name))
            marked = time.monotonic()
            while not self._stopping:
                if len(self.in_flight) >= self.depth or self._head_only or self._held is not None:
                    await self._wait(settings.poll_timeout)
                    held = self._held
                    if held is not None and not self.in_flight and not self._stopping:
                        self._held = None
                        self._write(Item.unpack(held))
                else:
                    raw = await broker.pop(queue, settings.poll_timeout)
                    if raw is None:
                        pass
                    elif self._stopping:
                        self._requeue([Item.unpack(raw)])
                        break
                    elif self.in_flight and raw[raw.find(b"\n") + 1 :].startswith(b"HEAD "):
                        self._held = raw  # written once the responses before it are in
                    else:
                        self._write(Item.unpack(raw))
                if time.monotonic() - marked >= refresh:
                    await dispatcher.mark_polling(name, relay.public_url(name))
                    marked = time.monotonic()
        except (BrokerUnavailable, BrokerClosed):
            logger.warning("PTTH connection of %s: the broker failed; closing it", name, exc_info=True)
            self._stopping = True
            if not self.in_flight:
                self._close("")

    async def _wait(self, timeout: float) -> None:
        wake = self._wake = self.loop.create_future()
        timer = self.loop.call_later(timeout, _settle, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def _write(self, item: Item) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self._requeue([item])
            return
        method = _method(item.message)
        self.in_flight.append(_Pending(item, method))
        if method == b"HEAD":
            self._head_only = True
        transport.write(item.message)

    # Ending --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Take no more requests; close once those in flight are answered (DELETE, shutdown)."""
        self._stopping = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._task is not None and not self.in_flight:
            self._close("")

    def _broken(self, why: str) -> None:
        logger.info("PTTH connection of %s closed: %s", self.name, why)
        self._close(f"invalid response from the application: {why}")

    def _close(self, why: str) -> None:
        """Close the connection; requests written and unanswered get 502 with ``why``."""
        if self.closed:
            return
        self.closed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        held, self._held = self._held, None
        if held is not None:
            self._requeue([Item.unpack(held)])
        failed = [p.item for p in self.in_flight]
        self.in_flight.clear()
        for item in failed:
            self.pool.fail(item, why or "the application's PTTH connection closed")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.pool.remove(self)

    def _requeue(self, items: list[Item]) -> None:
        if items:
            self.pool.requeue(self.name, items)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class PtthPool:
    """The PTTH connections open in this process, by name: their bounds, their gauge, their end."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        settings = relay.settings
        self.per_name = settings.max_ptth_per_name
        self.total = settings.max_ptth_connections
        self.by_name: dict[str, set[PtthConnection]] = {}
        self.count = 0
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        gauge = Gauge(
            "relay_ptth_connections", "PTTH connections open on this process", registry=relay.services.metrics
        )
        gauge.set_function(lambda: self.count)

    def names(self) -> set[str]:
        return set(self.by_name)

    def admit(self, name: str) -> None:
        """Busy (503) when a new connection for ``name`` would pass a bound."""
        if self.total > 0 and self.count >= self.total:
            raise Busy("too many PTTH connections on this relay", 5)
        if self.per_name > 0 and len(self.by_name.get(name, ())) >= self.per_name:
            raise Busy("too many PTTH connections for this name", 5)

    def add(self, conn: PtthConnection) -> None:
        self.by_name.setdefault(conn.name, set()).add(conn)
        self.count += 1

    def remove(self, conn: PtthConnection) -> None:
        conns = self.by_name.get(conn.name)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        self.count -= 1
        if not conns:
            del self.by_name[conn.name]
        if not self.closing:
            # Like a poller that disconnected: queued requests are not waited for long.
            self._spawn(self.relay.dispatcher.mark_gone(conn.name))

    def gone(self, name: str) -> None:
        """The registration ``name`` is deleted (or expired): its connections stop."""
        for conn in list(self.by_name.get(name, ())):
            conn.stop()

    # What the connections tell requesters --------------------------------------------------------
    def answer(self, item: Item, response: bytes) -> None:
        self._spawn(self.relay.dispatcher.answer(item, response))

    def fail(self, item: Item, reason: str) -> None:
        self._spawn(self.relay.dispatcher.fail(item, BadReply(reason)))

    def requeue(self, name: str, items: list[Item]) -> None:
        self._spawn(self.relay.dispatcher.put_back(name, [item.pack() for item in items]))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(_logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, grace: float = 5.0) -> None:
        """Shutdown: every connection stops taking requests and closes once its requests in flight
        are answered, within ``grace`` seconds (then the rest get 502)."""
        self.closing = True
        conns = [conn for conns in self.by_name.values() for conn in conns]
        for conn in conns:
            conn.stop()
        deadline = time.monotonic() + grace
        while self.by_name and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in [conn for conns in self.by_name.values() for conn in conns]:
            conn._close("the relay is shutting down")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _logged(coro: Coroutine[object, object, None]) -> None:
    try:
        await coro
    except (BrokerUnavailable, BrokerClosed):
        logger.warning("PTTH: the broker failed to carry an answer", exc_info=True)


async def handshake(
    relay: Relay,
    cap: str,
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    upgrade: str,
    alpn: str | None,
) -> bool | None:
    """A request on request URL ``cap`` with an ``Upgrade`` header: True when it became a PTTH
    connection (nothing more to answer), None when it asks for no PTTH (an ordinary request), False
    when this server cannot take the connection over (another ASGI server, a mailbox name, shutdown):
    it is then served as a poll, so a client that tries PTTH first gets a poll answer and falls back.
    Raises a RelayError (404 unknown URL, 400 a refused offer, 503 too many connections)."""
    method = scope["method"]
    offer = offered(method, upgrade, alpn)
    if offer is None:
        return None
    reg = await relay.registry.by_request_cap(cap)
    if reg is None:
        raise NotFound("no such request URL")
    takeover: Takeover | None = scope.get(TAKEOVER)
    # A mailbox name's stored requests reach its application through polls only (relay.mailbox).
    if takeover is None or reg.mailbox or relay.closing:
        return False
    relay.ptth.admit(reg.name)
    if method == "POST":  # PTTH/1.0 clients POST; what they send as a body means nothing here
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return True
            size += len(message.get("body", b""))
            if size > MAX_HANDSHAKE_BODY:
                raise BodyTooLarge(f"a PTTH handshake's body must be under {MAX_HANDSHAKE_BODY} bytes")
            if not message.get("more_body", False):
                break
    takeover(offer.head, partial(PtthConnection, relay.ptth, reg.name, offer.kind))
    logger.info("relay %s: PTTH connection (%s)", reg.name, offer.kind)
    return True
