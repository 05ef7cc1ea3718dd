"""Sharing outbound work fairly: bounded slots, and a bound per callback host.

One callback host that accepts connections and never answers must cost only its own share: the
outbox's deliveries and the verifier's GETs each hold a global bound and a bound per host, keyed
by :func:`netloc`, so a tarpit fills its own slots while every other host goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from reversehub.core.egress import normalize_host

_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=4096)
def _one_spelling(host: str) -> str:
    return normalize_host(host)


def netloc(url: str) -> str:
    """A URL's host and port in one spelling (``localhost``, ``127.1`` and ``0x7f000001`` are one
    host), without userinfo or a default port: the key by which work is shared fairly between
    callback hosts, so that spelling one host many ways does not buy many shares."""
    parts = urlsplit(url)
    host = _one_spelling(parts.hostname or "")
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):
        return host
    return f"{host}:{port}"


class Slots:
    """At most ``n`` holders at a time; the others wait in arrival order.

    asyncio.Semaphore in Python 3.11 wakes a waiter by walking its queue past the waiters already
    woken but not yet run, in Python, on every release: quadratic in the hundreds of deliveries a
    fan-out queues behind the global bound. Here a release hands its slot straight to the first
    waiter: O(1) either way.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free > 0:
            self._free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot came with the cancellation: pass it on
            else:
                # A release that ran between the cancellation and this line has taken the
                # cancelled future off the queue already (it skips done futures).
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes to this waiter, never back to the pool
                return
        self._free += 1


class HostSlots:
    """:class:`Slots` per host, ``n`` each, created on first use and dropped once nobody holds or
    waits for them, so an attacker's many hosts cost memory only while their work is under way."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._hosts: dict[str, tuple[Slots, list[int]]] = {}

    def load(self, host: str) -> int:
        """How many hold or wait for ``host``'s slots."""
        entry = self._hosts.get(host)
        return entry[1][0] if entry is not None else 0

    @asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = (Slots(self._n), [0])
        slots, users = entry
        users[0] += 1
        try:
            async with slots:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._hosts[host]
