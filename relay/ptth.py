"""PTTH: an application's own connection, turned around, as a transport of its registration.

Two handshakes, both on a registration's request URL (the capability is the credential, as for a
poll; docs/ptth.md):

- draft-kazuho-ptth-ptth-00 (HTTP/1.1 form): ``GET`` with ``Connection: upgrade``, ``Upgrade: ptth``
  and an ``ALPN`` header (RFC 7639) naming the versions the backend accepts. We speak ``http/1.1`` on
  the transposed connection (no h2): ``101`` with ``Connection: upgrade``, ``Upgrade: ptth``,
  ``ALPN: http%2F1.1``. An offer without ``http%2F1.1``, or without ``ALPN``, is refused with 400.
- PTTH/1.0 (Second Life, draft-lentczner-rhttp-00): ``GET`` or ``POST`` with ``Upgrade: PTTH/1.0``
  (with or without ``Connection: Upgrade``); ``101`` with ``Upgrade: PTTH/1.0``, ``Connection: Upgrade``.

After the ``101`` the relay is the HTTP/1.1 client on that connection
(:class:`relay.ptth_connection.PtthConnection`): a consumer of the name's queue (``relay.q.{name}``,
relay.queue) beside its long-poll pollers, so the broker's arrival-order hand-over makes them share
the name's requests round-robin, across processes with the Redis broker. :class:`PtthPool` holds
this process's connections: their bounds, their gauge, their end, and the direct way in for
requesters of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

from prometheus_client import Gauge

from relay.errors import BadReply, BodyTooLarge, Busy, InvalidInput, NoReply, NotFound
from relay.ptth_connection import NotProcessed, PtthConnection, Response, method_of
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


class PtthPool:
    """The PTTH connections open in this process, by name: their bounds, their gauge, their end."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        settings = relay.settings
        self.per_name = settings.max_ptth_per_name
        self.total = settings.max_ptth_connections
        self.by_name: dict[str, list[PtthConnection]] = {}
        self.count = 0
        self.closing = False
        self._turn = 0
        # Requests are written directly only where the queue is this process's own: with a broker
        # shared by processes, the name's consumers elsewhere must get their turn.
        self._direct = not relay.broker.spans_processes
        self._tasks: set[asyncio.Task[None]] = set()
        self._answers: list[tuple[bytes, bytes]] = []
        self._reply_timeout = settings.reply_timeout
        self._clock: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()
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
        self.by_name.setdefault(conn.name, []).append(conn)
        self.count += 1
        self._emptied.clear()

    def remove(self, conn: PtthConnection) -> None:
        conns = self.by_name.get(conn.name)
        if conns is None or conn not in conns:
            return
        conns.remove(conn)
        self.count -= 1
        if not conns:
            del self.by_name[conn.name]
        if not self.count:
            self._emptied.set()
        if not self.closing and not conns:
            # Like the last poller gone: queued requests are not waited for long.
            self._spawn(self.relay.dispatcher.mark_gone(conn.name))

    def gone(self, name: str) -> None:
        """The registration ``name`` is deleted (or expired): its connections stop."""
        for conn in list(self.by_name.get(name, ())):
            conn.stop()

    # Requests of this process --------------------------------------------------------------------
    async def direct(self, name: str, raw: bytes) -> Response | None:
        """The response to packed request ``raw``, written by its requester directly on a connection of
        ``name`` with room; None when there is none, or the broker's queue must have it: a request
        is queued there already (it goes first), or a poll of the name waits here (pollers and PTTH
        connections take turns through the queue, as the broker hands requests out in arrival order)."""
        conns = self.by_name.get(name)
        if not conns or not self._direct or self.relay.polled_here(name):
            return None
        method = method_of(raw)
        self._turn += 1
        count = len(conns)
        for i in range(count):
            conn = conns[(self._turn + i) % count]
            if conn.room_for(method):
                break
        else:
            return None
        if not conn.popping and await self.relay.broker.length(queue_key(name)):
            return None
        future: asyncio.Future[Response] = conn.loop.create_future()
        conn.write(raw, method, future, time.monotonic() + self._reply_timeout)
        if self._clock is None:
            self._clock = asyncio.get_running_loop().create_task(self._expire())
        try:
            return await future
        except NotProcessed:
            return None

    async def _expire(self) -> None:
        """Requesters waiting here get 504 once ``reply_timeout`` has passed: one clock for all of
        them (a timer per request cost as much as the rest of its wait). Responses come in the order
        of the requests, so only the oldest of each connection need a look."""
        tick = min(0.25, max(0.005, self._reply_timeout / 20))
        try:
            while self.count:
                await asyncio.sleep(tick)
                now = time.monotonic()
                for conns in self.by_name.values():
                    for conn in conns:
                        for pending in conn.in_flight:
                            future = pending.future
                            if future is None:
                                continue
                            if pending.deadline > now:
                                break
                            if not future.done():
                                future.set_exception(NoReply())
        finally:
            self._clock = None

    # What the connections tell requesters of the broker's queue ----------------------------------
    def answer(self, raw: bytes, response: bytes) -> None:
        if not self._answers:
            self._spawn(self._send_answers())
        self._answers.append((raw, response))

    async def _send_answers(self) -> None:
        """The answers of one turn of the event loop, published in one task."""
        answers, self._answers = self._answers, []
        answer = self.relay.dispatcher.answer
        for raw, response in answers:
            await answer(Item.unpack(raw), response)

    def fail(self, raw: bytes, reason: str) -> None:
        self._spawn(self.relay.dispatcher.fail(Item.unpack(raw), BadReply(reason)))

    def requeue(self, name: str, raws: list[bytes]) -> None:
        self._spawn(self.relay.dispatcher.put_back(name, raws))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(_logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, grace: float = 5.0) -> None:
        """Shutdown: every connection stops taking requests and closes once its requests in flight
        are answered, within ``grace`` seconds (then the rest get 502)."""
        self.closing = True
        for conn in [conn for conns in self.by_name.values() for conn in conns]:
            conn.stop()
        if self.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), grace)
        for conn in [conn for conns in self.by_name.values() for conn in conns]:
            conn._close("the relay is shutting down")
        if self._clock is not None:
            self._clock.cancel()
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
