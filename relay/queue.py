"""Requests waiting for pollers, and replies finding their requesters, all through the broker.

Nothing here assumes one process. Broker names:

- ``relay.q.{name}``: the FIFO of queued requests of a name. Each item is
  ``{id} {client}\\n{message/http bytes}``. Pollers blocked on it are served in arrival order, which
  gives round-robin across pollers (broker contract).
- ``relay.reply.{process}``: the channel of the process whose requester queued an item (an item id
  starts with its process's random prefix). Each process subscribes to its own once, before it
  queues anything, so no reply is missed and a relayed request costs no SUBSCRIBE of its own. A
  message is ``{id} `` + ``R`` + a serialized response, or ``{id} E{status} {reason}`` when the relay
  answers for the application. A reply to a requester of the same process never leaves it.
- ``relay.bound.{cap}``: the requests a request URL delivered, until answered (TTL: reply timeout).
  A reply POSTed to that URL on any process finds them; a repeated GET re-delivers them, so a lost
  poll response costs nothing.
- ``relay.seen.{name}``: "a poller is around" (see :meth:`Dispatcher.relay` for the busy/absent rule).
- ``relay.online`` channel: the public URL prefix of a name whose first poller just arrived.
- ``relay.changed`` channel: a name whose registration was deleted or changed (caches, held polls).

Ordering: a requester's connection sends its next request only after the previous one was answered
(HTTP/1.1 has one request in flight per connection, and uvicorn serves pipelined ones in turn), so
one FIFO per name never reorders the requests of one connection, whatever poller takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import secrets
import time
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import anyio

from relay.errors import BadReply, Busy, NoPoller, NoReply, NotFound, RequesterError, Unavailable, Withdrawn
from reversehub.core.backoff import backoff
from reversehub.core.broker import Broker, BrokerClosed, BrokerUnavailable
from reversehub.core.contracts import RELAY_ONLINE
from reversehub.core.settings import Settings

logger = logging.getLogger(__name__)

_ID_PREFIX = secrets.token_hex(8) + "-"
_ids = itertools.count()
CHANGED_CHANNEL = "relay.changed"
_UNSHIELDED = nullcontext()
# Seconds a requester waits for this process's reply channel to be subscribed (at start, or after
# the broker's pub/sub connection was lost) before it is answered 503.
INBOX_WAIT = 2.0


def queue_key(name: str) -> str:
    return "relay.q." + name


def reply_channel(item_id: str) -> str:
    """The channel of the process that queued item ``item_id`` (its id's prefix names it)."""
    return "relay.reply." + item_id.partition("-")[0]


def bound_key(cap: str) -> str:
    return "relay.bound." + cap


def seen_key(name: str) -> str:
    return "relay.seen." + name


# Item and Delivery are NamedTuples rather than frozen dataclasses: a few are made per relayed
# request, and a frozen dataclass's __init__ sets each field through object.__setattr__.
class Item(NamedTuple):
    id: str
    client: str
    message: bytes

    def pack(self) -> bytes:
        return b"%s %s\n%s" % (self.id.encode("ascii"), self.client.encode("latin-1"), self.message)

    @classmethod
    def unpack(cls, raw: bytes) -> Item:
        head, _, message = raw.partition(b"\n")
        item_id, _, client = head.partition(b" ")
        return cls(item_id.decode("ascii"), client.decode("latin-1"), message)

    @staticmethod
    def packed_head(item_id: str, client: str) -> bytes:
        """What :meth:`pack` writes before the message: a requester builds the packed item in one
        piece with it, so the message is never held twice (the bytes are the relay's memory bound)."""
        return b"%s %s\n" % (item_id.encode("ascii"), client.encode("latin-1"))


def new_item_id() -> str:
    """An item id: unique across processes (random prefix) and cheap (a counter); ids never leave the broker."""
    return f"{_ID_PREFIX}{next(_ids):x}"


class Delivery(NamedTuple):
    """What one request URL delivered: the next URL's capability, the envelope type, the items."""

    next_cap: str
    content_type: str
    items: list[Item]

    def pack(self, raw_items: list[bytes] | None = None) -> bytes:
        """Bytes for the broker; ``raw_items``: the items already packed (as taken from the queue)."""
        parts = [self.next_cap.encode("ascii"), b"\n", self.content_type.encode("ascii"), b"\n"]
        for raw in raw_items if raw_items is not None else [item.pack() for item in self.items]:
            parts += [b"%d\n" % len(raw), raw]
        return b"".join(parts)

    @classmethod
    def unpack(cls, raw: bytes) -> Delivery:
        next_cap, _, rest = raw.partition(b"\n")
        ctype, _, rest = rest.partition(b"\n")
        items, pos = [], 0
        while pos < len(rest):
            end = rest.index(b"\n", pos)
            size = int(rest[pos:end])
            items.append(Item.unpack(rest[end + 1 : end + 1 + size]))
            pos = end + 1 + size
        return cls(next_cap.decode("ascii"), ctype.decode("ascii"), items)


class _Reply:
    """Where one requester's reply lands: kept here, not in a future, so that a requester's wake-up
    (a cancellation of its wait) never loses a reply that came at the same moment."""

    __slots__ = ("message", "error", "waiter")

    def __init__(self) -> None:
        self.message: bytes | None = None
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def put(self, message: bytes) -> None:
        if self.message is None:
            self.message = message
            self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> bytes:
        while self.message is None:
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.message


class _Wakeups:
    """One clock for all the requesters waiting in this process, instead of a timer each.

    A requester asks to look again at a given time (:meth:`at`); :meth:`run` interrupts its wait
    (``task.cancel()``, marked as ours in :meth:`fired`) once that time has passed, unless it has
    finished (:meth:`done`) or asked for another time meanwhile. An asyncio.timeout per relayed
    request cost about as much as all the rest of the requester's wait. Checks come up to ``tick``
    seconds late.

    The clock is local on purpose: a requester's deadline must hold whatever the broker does. A
    wake-up sent through the broker was lost when Redis restarted (published before the pub/sub
    connection was back), and its requester then waited for ever.
    """

    def __init__(self, tick: float) -> None:
        self._tick = tick
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, tuple[float, asyncio.Task[object]]] = {}
        self._fired: set[str] = set()
        self._pending = asyncio.Event()

    def at(self, when: float, item_id: str, task: asyncio.Task[object]) -> None:
        if not self._heap:
            self._pending.set()
        self._due[item_id] = (when, task)
        heapq.heappush(self._heap, (when, item_id))

    def fired(self, item_id: str) -> bool:
        """Whether the cancellation the requester of ``item_id`` just caught was its wake-up (and
        then it is consumed)."""
        if item_id in self._fired:
            self._fired.discard(item_id)
            return True
        return False

    def done(self, item_id: str) -> None:
        self._due.pop(item_id, None)
        self._fired.discard(item_id)

    async def settle(self, item_id: str, task: asyncio.Task[object]) -> None:
        """Finish ``item_id`` before its requester awaits anything else (a cleanup after a broker
        failure): its wake-up must not cancel that cleanup, and one that has fired already is taken
        back, or the requester's 503 would be cut off as it is sent."""
        fired = item_id in self._fired
        self.done(item_id)
        if not fired:
            return
        try:
            await asyncio.sleep(0)  # where a cancellation still pending on the task lands
        except asyncio.CancelledError:
            if task.uncancel() > 0:
                raise  # cancelled by someone else too

    async def run(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                self._pending.clear()
                await self._pending.wait()
            await asyncio.sleep(self._tick)
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                when, item_id = heapq.heappop(heap)
                due = self._due.get(item_id)
                if due is None or due[0] != when:
                    continue  # finished, or waiting for a later check
                del self._due[item_id]
                self._fired.add(item_id)
                due[1].cancel()


class Dispatcher:
    """The requester side (:meth:`relay`) and the poller side (:meth:`take`, :meth:`answer`)."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        tick = min(settings.unavailable_timeout, settings.reply_timeout) / 20
        self._wakeups = _Wakeups(min(0.25, max(0.005, tick)))
        # When the broker's calls never suspend, no cancellation can land between two of them and
        # shielding them (an anyio CancelScope per delivery) would buy nothing.
        self._inline = broker.never_suspends
        # Requesters of this process waiting for their replies, by item id; replies for them come on
        # this process's channel (subscribed by :meth:`run`), or straight from :meth:`answer` here.
        self._replies: dict[str, _Reply] = {}
        self._inbox = reply_channel(new_item_id())
        self._inbox_open = asyncio.Event()

    def _shielded(self) -> AbstractContextManager[object]:
        """Run broker calls that must not be cut apart (taken items end up bound or back in the queue)."""
        return _UNSHIELDED if self._inline else anyio.CancelScope(shield=True)

    # Requesters ---------------------------------------------------------------------------------
    async def relay(self, name: str, item_id: str, raw: bytes) -> bytes:
        """Queue item ``raw`` (packed, see :class:`Item`) for the pollers of ``name`` and wait for its
        reply (serialized response).

        Busy versus absent (spec: "distinguish between unavailability of the registered Application
        and a busy Application that is working through a backlog"): every ``unavailable_timeout``
        seconds that the request is still unanswered, if ``relay.seen.{name}`` is absent the request
        is withdrawn from the queue and the requester gets 504 "no poller". The key is set when a
        poll starts (TTL poll timeout + unavailable timeout), when a poll delivers requests (TTL
        reply timeout + unavailable timeout: the application is working on them), and refreshed by
        replies, and cut to ``unavailable_timeout`` when a poller disconnects. A request some
        poller took is never withdrawn; it gets 504 "no reply" after ``reply_timeout``.

        A requester that stops waiting (cancelled: it disconnected, or the server stops) takes its
        request out of the queue if no poller has it yet, so nothing is held for nobody.
        """
        queue = queue_key(name)
        settings = self.settings
        if not self._inbox_open.is_set():
            await self._await_inbox()
        sub = self._replies[item_id] = _Reply()
        try:
            length = await self.broker.push(queue, raw)
            if length > settings.max_queued_per_name and await self.broker.remove(queue, raw):
                raise Busy("too many queued requests for this name", max(1, math.ceil(settings.unavailable_timeout)))
            deadline = time.monotonic() + settings.reply_timeout
            taken = False
            task = asyncio.current_task()
            assert task is not None
            try:
                while True:
                    now = time.monotonic()
                    remaining = deadline - now
                    if remaining <= 0:
                        if not taken and await self.broker.remove(queue, raw):
                            raise NoPoller()
                        raise NoReply()
                    wait = remaining if taken else min(settings.unavailable_timeout, remaining)
                    self._wakeups.at(now + wait, item_id, task)
                    try:
                        return _reply_or_raise(await sub.get())
                    except asyncio.CancelledError:
                        if not self._wakeups.fired(item_id):
                            raise  # not our clock: the requester left, or the server stops
                        if task.uncancel() > 0:
                            raise  # cancelled by someone else too, at the same moment
                    if not taken and await self.broker.get(seen_key(name)) is None:
                        if await self.broker.remove(queue, raw):
                            raise NoPoller()
                        taken = True  # a poller has it: wait for the reply until the deadline
            except BaseException as exc:
                # Gone (cancelled), or the broker failed (its reply may have been lost: 503): the
                # request leaves the queue if no poller has it yet, so nothing is held for nobody.
                if isinstance(exc, Exception):
                    await self._wakeups.settle(item_id, task)
                if not taken and isinstance(exc, asyncio.CancelledError | BrokerUnavailable):
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await self.broker.remove(queue, raw)
                raise
            finally:
                self._wakeups.done(item_id)
        finally:
            del self._replies[item_id]

    async def _await_inbox(self) -> None:
        """Wait (briefly) until this process's reply channel is subscribed: a request queued before
        that could have its reply published to nobody."""
        try:
            with anyio.fail_after(INBOX_WAIT):
                await self._inbox_open.wait()
        except TimeoutError:
            raise BrokerUnavailable("the relay's reply channel is not subscribed") from None

    async def run(self) -> None:
        """Wake requesters whose check is due (:class:`_Wakeups`), and hand replies arriving on this
        process's channel to their requesters; runs as long as the relay does.

        The clock touches nothing of the broker, so it cannot fail when the broker does."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._wakeups.run)
            tg.start_soon(self._receive)

    async def _receive(self) -> None:
        failures = 0
        while True:
            try:
                async with self.broker.subscribe(self._inbox) as sub:
                    self._inbox_open.set()
                    failures = 0
                    while True:
                        message = await sub.get()
                        item_id, _, reply = message.partition(b" ")
                        waiting = self._replies.get(item_id.decode("ascii", "replace"))
                        if waiting is not None:
                            waiting.put(reply)
            except BrokerClosed:
                return
            except BrokerUnavailable as exc:
                # Replies may have been published while the channel was down: every requester
                # waiting now is answered 503 (its request may be retried), as a lost reply would
                # otherwise leave it waiting until its reply timeout; new ones wait until the
                # channel is subscribed again.
                self._inbox_open.clear()
                for waiting in self._replies.values():
                    waiting.fail(exc)
                failures += 1
                logger.warning("relay reply channel lost (%s); subscribing again", exc)
                await anyio.sleep(backoff(failures, 0.05, 1.0))
            finally:
                self._inbox_open.clear()

    # Pollers ------------------------------------------------------------------------------------
    async def mark_polling(self, name: str, online_url: str) -> None:
        """A poll starts: the name has a poller; announce it when none was seen before."""
        ttl = self.settings.poll_timeout + self.settings.unavailable_timeout
        if await self.broker.swap(seen_key(name), b"1", ttl) is None:
            await self.broker.publish(RELAY_ONLINE, online_url.encode())

    async def mark_gone(self, name: str) -> None:
        """A poller disconnected: unless another comes soon, queued requests are not waited for."""
        await self.broker.set(seen_key(name), b"1", self.settings.unavailable_timeout)

    async def bound(self, cap: str) -> Delivery | None:
        raw = await self.broker.get(bound_key(cap))
        return Delivery.unpack(raw) if raw is not None else None

    async def take(self, name: str, timeout: float, max_items: int) -> list[bytes]:
        """Wait up to ``timeout`` for the first queued item, then take up to ``max_items`` in all.

        Cancellation while waiting loses nothing (broker contract); once the first item is here the
        rest is taken shielded, so what we hold is returned and can be put back if needed.
        """
        queue = queue_key(name)
        first = await self.broker.pop(queue, timeout)
        if first is None:
            return []
        items = [first]
        if max_items == 1:
            return items
        with self._shielded():
            while len(items) < max_items:
                more = await self.broker.pop(queue, 0)
                if more is None:
                    break
                items.append(more)
        return items

    async def put_back(self, name: str, raw_items: list[bytes]) -> None:
        """Items taken for a poller that cannot have them go back to the front, in order."""
        with self._shielded():
            for raw in reversed(raw_items):
                await self.broker.push_front(queue_key(name), raw)

    async def bind(self, name: str, cap: str, delivery: Delivery, raw_items: list[bytes]) -> Delivery:
        """Bind taken items to request URL ``cap``; if a concurrent GET on it won, ours go back."""
        settings = self.settings
        ttl = settings.reply_timeout + settings.unavailable_timeout
        with self._shielded():
            if await self.broker.set_if_absent(
                bound_key(cap), delivery.pack(raw_items), ttl, (seen_key(name), b"1", ttl)
            ):
                return delivery
            await self.put_back(name, raw_items)
            existing = await self.bound(cap)
        if existing is None:
            raise NotFound("request URL was answered meanwhile")
        return existing

    async def unbind(self, name: str, cap: str, raw_items: list[bytes]) -> None:
        """The poller went away before getting the delivery: return the items to the queue."""
        with self._shielded():
            if await self.broker.delete(bound_key(cap)):
                await self.put_back(name, raw_items)

    async def claim(self, cap: str) -> Delivery:
        """Take the delivery bound to ``cap`` for answering it (exactly one reply wins)."""
        raw = await self.broker.getdel(bound_key(cap))
        if raw is None:
            raise NotFound("no request is waiting for a reply at this URL")
        return Delivery.unpack(raw)

    async def restore(self, cap: str, delivery: Delivery) -> None:
        """Bind a claimed delivery to ``cap`` again: its reply never came in whole (the poller went
        away mid-body, or the relay was too full to read it), so it may be posted again."""
        ttl = self.settings.reply_timeout + self.settings.unavailable_timeout
        await self.broker.set(bound_key(cap), delivery.pack(), ttl, nx=True)

    async def answer(self, item: Item, response: bytes) -> None:
        await self._send(item.id, b"R" + response)

    async def fail(self, item: Item, error: RequesterError) -> None:
        await self._send(item.id, b"E%d %s" % (error.status, error.reason.encode()))

    async def _send(self, item_id: str, reply: bytes) -> None:
        waiting = self._replies.get(item_id)
        if waiting is not None:  # its requester is in this process: no broker needed
            waiting.put(reply)
            return
        await self.broker.publish(reply_channel(item_id), b"%s %s" % (item_id.encode("ascii"), reply))

    async def drain(self, name: str, error: RequesterError) -> int:
        """Answer every queued request of a deleted name for the application."""
        n = 0
        while (raw := await self.broker.pop(queue_key(name), 0)) is not None:
            await self.fail(Item.unpack(raw), error)
            n += 1
        return n


def _reply_or_raise(message: bytes) -> bytes:
    if message[:1] == b"R":
        return message[1:]
    status, _, reason = message[1:].partition(b" ")
    errors: dict[int, type[RequesterError]] = {502: BadReply, 504: NoReply, 404: Withdrawn}
    raise errors.get(int(status or 503), Unavailable)(reason.decode() or None)
