"""The broker seam: what the relay and the hub need from "something between processes".

Three small abilities, each with the semantics both implementations must keep (the contract tests in
``tests/test_broker.py`` run against each):

- **Queues**: FIFO work queues, every item handed to exactly one consumer. Blocked consumers are
  served in the order they started waiting (round-robin across pollers). An item taken by a consumer
  that then cannot use it goes back to the *front* with :meth:`Broker.push_front`, so nothing is lost
  or reordered. :meth:`Broker.remove` lets a producer withdraw an item nobody took in time; it
  returns ``False`` when a consumer already has it, which settles the race in one place.
- **Channels**: fire-and-forget fan-out to every current subscriber on every process.
- **Keys**: small values with an optional time-to-live, atomic set-if-absent and counters, and a few
  compound operations (:meth:`Broker.swap`, :meth:`Broker.getdel`, :meth:`Broker.set_if_absent`) that
  are each one atomic step and, over Redis, one round trip: the relay makes several key operations per
  relayed request, and a round trip each was most of what a request cost with Redis.

Each broker also declares what it is (:attr:`Broker.spans_processes`, :attr:`Broker.never_suspends`), so
callers ask an ability instead of naming an implementation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class BrokerClosed(RuntimeError):
    """The broker was closed; no more work goes through it."""


class BrokerUnavailable(RuntimeError):
    """The broker's server (Redis) cannot be reached right now; the relay answers 503."""


class Subscription(Protocol):
    """Messages published on one channel after the subscription started, in publish order."""

    async def get(self) -> bytes:
        """The next message, waiting as long as it takes (wrap in ``anyio.fail_after`` for a deadline).

        Raises :class:`BrokerUnavailable` once when messages may have been missed (a broker that
        spans processes lost its connection); later calls go on with what arrives after it is back.
        A waiter whose one message may be among the lost (a requester's reply) gives up then."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class Broker(Protocol):
    # Abilities --------------------------------------------------------------------------------
    spans_processes: bool
    """True when other processes share this broker: a channel message may come from elsewhere, and one
    published while this process was not listening (a reconnect) is missed."""

    never_suspends: bool
    """True when no call returns control to the event loop before it has done its work: then no
    cancellation can land between two calls, and callers need not shield a sequence of them. A
    subclass whose calls await anything must set it to False."""

    # Queues -----------------------------------------------------------------------------------
    async def push(self, queue: str, item: bytes) -> int:
        """Append ``item``; return the queue's length after the push."""
        ...

    async def push_front(self, queue: str, item: bytes) -> None:
        """Put back an item a consumer took but could not use: it is the next one handed out."""
        ...

    async def pop(self, queue: str, timeout: float) -> bytes | None:
        """Take the oldest item, waiting up to ``timeout`` seconds (0: do not wait); None if none came.

        Cancellation never loses an item: one already taken for a cancelled caller goes back to the front.
        """
        ...

    async def remove(self, queue: str, item: bytes) -> bool:
        """Withdraw ``item`` if it is still queued; False if a consumer already took it."""
        ...

    async def length(self, queue: str) -> int: ...

    # Channels ---------------------------------------------------------------------------------
    async def publish(self, channel: str, message: bytes) -> None: ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[Subscription]:
        """``async with broker.subscribe(ch) as sub``: subscribed once the block is entered."""
        ...

    # Keys -------------------------------------------------------------------------------------
    async def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        """Store ``value`` (expiring after ``ttl`` seconds); with ``nx`` only if absent. True if stored."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def delete(self, key: str) -> bool: ...

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        """Add ``amount`` (one) and return the new value; ``ttl`` is applied when the key is created."""
        ...

    async def swap(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        """Store ``value`` (expiring after ``ttl``) and return the value it replaced (None if absent)."""
        ...

    async def getdel(self, key: str) -> bytes | None:
        """Take ``key``'s value and delete it; of concurrent callers only one gets it."""
        ...

    async def set_if_absent(
        self, key: str, value: bytes, ttl: float | None, also: tuple[str, bytes, float | None]
    ) -> bool:
        """Store ``value`` at ``key`` only if absent and, when it was stored, ``also`` = (key, value,
        ttl) unconditionally, in one atomic step. True if ``key`` was stored."""
        ...

    async def aclose(self) -> None: ...
