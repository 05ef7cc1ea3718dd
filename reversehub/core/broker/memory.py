"""The in-process broker: the embedded default, and the reference for the contract tests."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

from reversehub.core.broker.base import BrokerClosed


class MemorySubscription:
    """Published messages in a deque and one future for the consumer (an asyncio.Queue costs more
    to make, and the relay makes one subscription per relayed request). One consumer at a time."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def _put(self, message: bytes) -> None:
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> bytes:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.get()


class _Subscribing:
    """``async with broker.subscribe(ch)``: a plain class, cheaper than an @asynccontextmanager."""

    __slots__ = ("_channels", "_channel", "_sub")

    def __init__(self, channels: dict[str, set[MemorySubscription]], channel: str) -> None:
        self._channels = channels
        self._channel = channel
        self._sub = MemorySubscription()

    async def __aenter__(self) -> MemorySubscription:
        self._channels.setdefault(self._channel, set()).add(self._sub)
        return self._sub

    async def __aexit__(self, *exc_info: object) -> None:
        subs = self._channels.get(self._channel)
        if subs is not None:
            subs.discard(self._sub)
            if not subs:
                del self._channels[self._channel]


def _expire(fut: asyncio.Future[bytes | None]) -> None:
    if not fut.done():
        fut.set_result(None)


class MemoryBroker:
    """The broker of one process: plain dicts and futures on this event loop."""

    spans_processes = False
    never_suspends = True

    def __init__(self) -> None:
        self._queues: dict[str, deque[bytes]] = {}
        self._waiters: dict[str, deque[asyncio.Future[bytes | None]]] = {}
        self._channels: dict[str, set[MemorySubscription]] = {}
        self._keys: dict[str, tuple[bytes, float | None]] = {}
        self._writes = 0  # key writes since the last sweep of expired keys
        self._kept = 0  # keys the last sweep left
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise BrokerClosed("broker is closed")

    # Queues -----------------------------------------------------------------------------------
    def _hand_over(self, queue: str, item: bytes) -> bool:
        """Give ``item`` straight to the longest-waiting consumer, if any is still waiting."""
        waiters = self._waiters.get(queue)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(item)
                if not waiters:
                    del self._waiters[queue]
                return True
        self._waiters.pop(queue, None)
        return False

    async def push(self, queue: str, item: bytes) -> int:
        self._check()
        if self._hand_over(queue, item):
            return len(self._queues.get(queue, ()))
        q = self._queues.setdefault(queue, deque())
        q.append(item)
        return len(q)

    async def push_front(self, queue: str, item: bytes) -> None:
        self._check()
        if not self._hand_over(queue, item):
            self._queues.setdefault(queue, deque()).appendleft(item)

    async def pop(self, queue: str, timeout: float) -> bytes | None:
        self._check()
        q = self._queues.get(queue)
        if q:
            first = q.popleft()
            if not q:
                del self._queues[queue]
            return first
        if timeout <= 0:
            return None
        # A bare future and one timer handle per waiting pop: thousands of polls wait at once, and
        # wait_for + shield cost two extra futures, a task-side timeout object and their callbacks.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes | None] = loop.create_future()
        self._waiters.setdefault(queue, deque()).append(fut)
        timer = loop.call_later(timeout, _expire, fut)
        item: bytes | None
        try:
            item = await fut
        except asyncio.CancelledError:
            item = self._abandon(queue, fut)
            if item is not None:
                await self.push_front(queue, item)
            raise
        finally:
            timer.cancel()
        if item is None:  # timed out
            self._abandon(queue, fut)
        return item

    def _abandon(self, queue: str, fut: asyncio.Future[bytes | None]) -> bytes | None:
        """Stop waiting; an item that was handed over in the meantime is returned, not lost."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            item = fut.result()
            if item is not None:
                return item
        fut.cancel()
        waiters = self._waiters.get(queue)
        if waiters is not None:
            try:
                waiters.remove(fut)
            except ValueError:
                pass
            if not waiters:
                del self._waiters[queue]
        return None

    async def remove(self, queue: str, item: bytes) -> bool:
        q = self._queues.get(queue)
        if not q:
            return False
        try:
            q.remove(item)
        except ValueError:
            return False
        if not q:
            del self._queues[queue]
        return True

    async def length(self, queue: str) -> int:
        return len(self._queues.get(queue, ()))

    # Channels ---------------------------------------------------------------------------------
    async def publish(self, channel: str, message: bytes) -> None:
        self._check()
        for sub in self._channels.get(channel, ()):
            sub._put(message)

    def subscribe(self, channel: str) -> _Subscribing:
        self._check()
        return _Subscribing(self._channels, channel)

    # Keys -------------------------------------------------------------------------------------
    def _live(self, key: str) -> bytes | None:
        entry = self._keys.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= time.monotonic():
            del self._keys[key]
            return None
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        self._check()
        if nx and self._live(key) is not None:
            return False
        self._keys[key] = (value, time.monotonic() + ttl if ttl is not None else None)
        self._wrote()
        return True

    def _wrote(self) -> None:
        """Expired keys nobody reads again are dropped by a sweep over all keys once there have
        been as many writes as the last sweep kept keys: O(1) per write however many keys live,
        and never more than twice as many keys as live ones (plus 4,096). A sweep keyed to the count
        of keys instead (say, at every multiple of 4,096) would sweep at every write while a fan-out
        holds the count at such a multiple."""
        self._writes += 1
        if self._writes >= max(4096, self._kept):
            self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, exp) in self._keys.items() if exp is not None and exp <= now]:
            del self._keys[key]
        self._writes, self._kept = 0, len(self._keys)

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def delete(self, key: str) -> bool:
        return self._live(key) is not None and self._keys.pop(key, None) is not None

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        self._check()
        current = self._live(key)
        if current is None:
            self._keys[key] = (str(amount).encode(), time.monotonic() + ttl if ttl is not None else None)
            self._wrote()  # rate-limit counters are many short-lived keys made only here
            return amount
        value = int(current) + amount
        self._keys[key] = (str(value).encode(), self._keys[key][1])
        return value

    async def swap(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        self._check()
        old = self._live(key)
        self._keys[key] = (value, time.monotonic() + ttl if ttl is not None else None)
        self._wrote()
        return old

    async def getdel(self, key: str) -> bytes | None:
        self._check()
        value = self._live(key)
        if value is not None:
            del self._keys[key]
        return value

    async def set_if_absent(
        self, key: str, value: bytes, ttl: float | None, also: tuple[str, bytes, float | None]
    ) -> bool:
        self._check()
        if self._live(key) is not None:
            return False
        now = time.monotonic()
        self._keys[key] = (value, now + ttl if ttl is not None else None)
        also_key, also_value, also_ttl = also
        self._keys[also_key] = (also_value, now + also_ttl if also_ttl is not None else None)
        self._wrote()
        self._wrote()
        return True

    async def aclose(self) -> None:
        self._closed = True
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(BrokerClosed("broker is closed"))
        self._waiters.clear()
