"""One PTTH connection after its 101 (relay.ptth): the relay writes requests, reads responses.

It writes each request as its requester sent it (the queued ``message/http`` bytes, but for the
hop-by-hop fields of the requester's own connection), up to ``ptth_pipeline`` at once (HTTP/1.1
pipelining, RFC 9112 9.3.2: responses come back in order), parses the responses with httptools and
relays each as the application wrote it.

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
import re
import socket
import time
from typing import TYPE_CHECKING, NamedTuple

import httptools

from relay.errors import BadReply
from relay.queue import queue_key
from reversehub.core.broker import BrokerClosed, BrokerUnavailable

if TYPE_CHECKING:
    from relay.ptth import PtthPool

logger = logging.getLogger(__name__)

# TCP keep-alive on a PTTH connection (seconds, probes): an idle one behind a NAT or a stateful
# firewall is forgotten by it after a few minutes, and neither end would hear of it.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 4


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


class NotProcessed(Exception):
    """A request written directly (:meth:`relay.ptth.PtthPool.direct`) that the application did not process
    (written after its ``Connection: close``): the requester queues it the usual way."""


class Response(NamedTuple):
    """An application's response read on a PTTH connection, parsed once: what a requester of this
    process is handed (relay.endpoints ``_forward``), and what :meth:`serialized` makes of it for the
    broker's requesters and the inspector."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # as written, but framing (Transfer-Encoding; Content-Length but a HEAD's)
    body: bytes  # de-chunked; cut short only by Inspector.record (then ``size`` says the whole)
    head: bool  # it answers a HEAD: no body, the application's Content-Length kept
    size: int  # bytes of the whole body

    def serialized(self) -> bytes:
        """The response as the relay's replies are serialized (relay.endpoints ``_unpack_reply``):
        status line, the application's header lines as written (but framing), a Content-Length for
        the body read."""
        lines = [b"HTTP/1.1 %d %s" % (self.status, self.reason)]
        lines += [name + b": " + value for name, value in self.headers]
        if not self.head:
            lines.append(b"Content-Length: %d" % self.size)
        lines.append(b"\r\n")
        return b"\r\n".join(lines) + self.body


class _Pending(NamedTuple):
    raw: bytes  # the packed queue item (relay.queue.Item)
    method: bytes
    future: asyncio.Future[Response] | None  # a requester of this process waiting here, or None: the broker
    deadline: float  # monotonic time its requester stops waiting (504), if it waits here


# Hop-by-hop fields (RFC 9110 7.6.1) describe the requester's connection, not the PTTH one: a
# requester's "Connection: close" passed on would make the application close the connection that
# serves everybody. The relay's own (this connection's) framing is HTTP/1.1, persistent.
_HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade")
_HOP_FIELD = re.compile(rb"\n(?:%s)[ \t]*:" % b"|".join(_HOP_BY_HOP))  # in a lowercased head


def _message(raw: bytes) -> bytes:
    """The request to write: the requester's message, as sent but for its hop-by-hop fields and
    its version (HTTP/1.1 here, whatever the requester spoke)."""
    message = raw[raw.index(b"\n") + 1 :]
    end = message.find(b"\r\n\r\n")
    head = message[:end].lower()
    line_end = head.find(b"\r\n")
    if head[line_end - 8 if line_end >= 0 else -8 :][:8] == b"http/1.1" and _HOP_FIELD.search(head) is None:
        return message
    lines = message[:end].split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    drop = set(_HOP_BY_HOP)
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"connection":
            drop.update(token.strip().lower() for token in value.split(b","))
    kept = [line for line in lines[1:] if line.partition(b":")[0].lower() not in drop]
    return b"\r\n".join([method + b" " + target + b" HTTP/1.1", *kept]) + message[end:]


def method_of(raw: bytes) -> bytes:
    """The method of packed request ``raw``."""
    start = raw.index(b"\n") + 1
    return raw[start : raw.index(b" ", start)]


class PtthConnection(asyncio.Protocol):
    """One application connection after the 101: the relay writes requests, reads responses.

    Requests come two ways: its consumer task takes them from the name's queue (the broker), and a
    requester of this process may write its own directly when the queue is empty and no poll of the
    name waits here (:meth:`relay.ptth.PtthPool.direct`), sparing the broker's round trips. Either way at most
    ``ptth_pipeline`` are in flight, in the order written, which is the order of the responses.
    """

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
        self._held: bytes | None = None  # taken from the queue, not written yet (no room, or a HEAD)
        self.popping = False  # waiting for the queue: it is empty (in-process broker)
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
            self._parser = parser
            parser.feed_data(head)  # an interim 1xx completes and the loop looks for the next head
        self._head_buffer = b""
        self._parser = httptools.HttpResponseParser(self)
        if buffer:
            self._parser.feed_data(buffer)

    def _declared_persistent(self) -> bool:
        tokens = [t.strip().lower() for k, v in self._headers if k.lower() == b"connection" for t in v.split(b",")]
        if self._parser.get_http_version() == "1.0":
            return b"keep-alive" in tokens
        return b"close" not in tokens

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
        if self._head_only and status >= 200:
            # httptools thinks a response without Content-Length runs to the end of the connection,
            # but this one has no body: only Connection and the version say whether it persists.
            self._persist = self._declared_persistent()
            self._head_only = False
            self._complete()
        else:
            self._persist = self._parser.should_keep_alive() or status < 200

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
        """The response to the oldest request in flight is in: relay it, parsed to its requester of
        this process, serialized to one of the broker's (:meth:`Response.serialized`)."""
        pending = self.in_flight.popleft()
        self._headers_done = False
        head = pending.method == b"HEAD"
        # De-chunked and framed by the length of what was read: the framing fields go.
        headers = [
            (name, value)
            for name, value in self._headers
            if (name[0] | 32) not in (99, 116)  # c, t: cheap first look, most headers are neither
            or not ((lower := name.lower()) == b"transfer-encoding" or (lower == b"content-length" and not head))
        ]
        body = self._body
        response = Response(
            self._status, self._reason, headers, body[0] if len(body) == 1 else b"".join(body), head, self._size
        )
        self._body = []
        future = pending.future
        if future is None:
            self.pool.answer(pending.raw, response.serialized())
        elif not future.done():
            future.set_result(response)
        if not self._persist:
            self._stop_after_close()
        elif self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._stopping and not self.in_flight:
            self._close("")

    def _stop_after_close(self) -> None:
        """The application said ``Connection: close`` (or spoke HTTP/1.0 without keep-alive): it
        processes nothing after that response (RFC 9112 9.6), so what was written after it is
        queued again, for another consumer."""
        unprocessed = list(self.in_flight)
        self.in_flight.clear()
        queued = []
        for pending in unprocessed:
            if pending.future is None:
                queued.append(pending.raw)
            elif not pending.future.done():
                pending.future.set_exception(NotProcessed())
        self._requeue(queued)
        self._close("")

    # Taking requests -----------------------------------------------------------------------------
    def room_for(self, method: bytes) -> bool:
        """Whether a request with ``method`` may be written now (a HEAD only alone: see
        :meth:`_feed_head_only`)."""
        if self._head_only or self._held is not None or self._stopping or self.closed:
            return False
        if method == b"HEAD":
            return not self.in_flight
        return len(self.in_flight) < self.depth

    def write(self, raw: bytes, method: bytes, future: asyncio.Future[Response] | None, deadline: float = 0.0) -> None:
        """Write the packed request ``raw`` (its message, as the requester sent it)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            if future is None:
                self._requeue([raw])
            elif not future.done():
                future.set_exception(NotProcessed())
            return
        self.in_flight.append(_Pending(raw, method, future, deadline))
        if method == b"HEAD":
            self._head_only = True
        transport.write(_message(raw))

    async def _consume(self) -> None:
        relay = self.relay
        dispatcher = relay.dispatcher
        broker = relay.broker
        name = self.name
        queue = queue_key(name)
        settings = relay.settings
        # A busy connection (no room) is not taking from the queue, so it says it is there often
        # enough that a requester waiting for it is never given up as having no poller.
        refresh = min(settings.poll_timeout, settings.unavailable_timeout) / 2
        try:
            await dispatcher.mark_polling(name, relay.public_url(name))
            marked = time.monotonic()
            while not self._stopping:
                held = self._held
                if held is not None:
                    self._held = None
                    method = method_of(held)
                    if self.room_for(method):
                        self.write(held, method, None)
                    else:
                        self._held = held
                        await self._wait(refresh)
                elif self._head_only or len(self.in_flight) >= self.depth:
                    await self._wait(refresh)
                else:
                    self.popping = True
                    try:
                        raw = await broker.pop(queue, settings.poll_timeout)
                    finally:
                        self.popping = False
                    if raw is not None:
                        if self._stopping:
                            self._requeue([raw])
                            break
                        # Requesters of this process may have filled the room meanwhile.
                        self._held = raw
                        continue
                if time.monotonic() - marked >= refresh:
                    await dispatcher.mark_polling(name, relay.public_url(name))
                    marked = time.monotonic()
        except Exception as exc:
            if isinstance(exc, BrokerUnavailable | BrokerClosed):
                logger.warning("PTTH connection of %s: the broker failed; closing it", name, exc_info=True)
            else:
                logger.exception("PTTH connection of %s failed; closing it", name)
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

    # Ending --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Take no more requests; close once those in flight are answered (DELETE, shutdown)."""
        self._stopping = True
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()  # waiting for the queue loses nothing when cancelled (broker contract)
        if not self.in_flight:
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
            self._requeue([held])
        failed = list(self.in_flight)
        self.in_flight.clear()
        reason = why or "the application's PTTH connection closed"
        for pending in failed:
            if pending.future is None:
                self.pool.fail(pending.raw, reason)
            elif not pending.future.done():
                pending.future.set_exception(BadReply(reason))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.pool.remove(self)

    def _requeue(self, raws: list[bytes]) -> None:
        if raws:
            self.pool.requeue(self.name, raws)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
