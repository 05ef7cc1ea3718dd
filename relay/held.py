"""The bytes of relayed requests this process holds, bounded per name and in all.

A request to a public URL is held in memory from the moment its body is read until its requester
has the reply, a 504, or is gone: in the requester's wait, in the in-process broker's queue, and
while a poller has it and has not answered. Without a bound on bytes (a bound on the count alone
is 1,000 × 10 MiB per name), one name whose poller takes a request and never answers, or many
names doing the same, hold as much memory as requesters send. So every request reserves what it
will hold, before its body is read when it declares a ``Content-Length`` and chunk by chunk when it
is chunked, and gives it back when its requester stops waiting. Past a bound the requester gets
503 with ``Retry-After`` (``Busy``), and its body is not read.

The count is per process: with Redis the queue itself lives in Redis (bounded by its own
``maxmemory``), and what this process holds is what its own requesters wait with.
"""

from __future__ import annotations

import math

from relay.errors import Busy


class HeldBytes:
    """Counts of bytes held, per name and in all, against ``per_name`` and ``total`` (0: no bound)."""

    __slots__ = ("per_name", "total", "held", "retry_after", "_by_name")

    def __init__(self, per_name: int, total: int, retry_after: float) -> None:
        self.per_name = per_name or math.inf
        self.total = total or math.inf
        self.held = 0
        self.retry_after = max(1, math.ceil(retry_after))
        self._by_name: dict[str, int] = {}

    def hold(self, name: str) -> Hold:
        """A reservation for one request to ``name``, empty until it grows."""
        return Hold(self, name)

    def held_for(self, name: str) -> int:
        return self._by_name.get(name, 0)

    def _take(self, name: str, size: int) -> None:
        by_name = self._by_name.get(name, 0) + size
        if by_name > self.per_name:
            raise Busy("too many bytes queued for this name", self.retry_after)
        if self.held + size > self.total:
            raise Busy("too many bytes queued on this relay", self.retry_after)
        self._by_name[name] = by_name
        self.held += size

    def _give_back(self, name: str, size: int) -> None:
        left = self._by_name[name] - size
        if left:
            self._by_name[name] = left
        else:
            del self._by_name[name]
        self.held -= size


class Hold:
    """The bytes one request holds; :meth:`release` once its requester stops waiting (idempotent)."""

    __slots__ = ("_held", "name", "size")

    def __init__(self, held: HeldBytes, name: str) -> None:
        self._held = held
        self.name = name
        self.size = 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all; :class:`Busy` (and nothing more held) when a bound is passed."""
        if size > self.size:
            self._held._take(self.name, size - self.size)
            self.size = size

    def release(self) -> None:
        if self.size:
            self._held._give_back(self.name, self.size)
            self.size = 0
