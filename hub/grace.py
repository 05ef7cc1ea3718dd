"""Work that a graceful shutdown lets finish: shielded from cancellation, bounded once shutdown begins.

Used for the step from a verification's echo to its commit (:mod:`hub.subscriptions`,
:mod:`hub.activations`): a callback that echoed its challenge counts itself subscribed, so that
write must not be cut off by the hub being cancelled. It must not hold a shutdown forever either::

    grace = Grace(SHUTDOWN_GRACE)
    with grace.shielded():          # cancellation waits for this block...
        await write()
    ...
    grace.begin()                   # ...until SHUTDOWN_GRACE seconds after this
    await grace.wait()              # returns when no block is running (or at that deadline)

Before :meth:`Grace.begin` a shielded block takes as long as its work takes (a database driver has
its own timeouts), so a slow write in normal running is never cut short.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from reversehub.core.settings import SHUTDOWN_GRACE


class Grace:
    def __init__(self, seconds: float = SHUTDOWN_GRACE) -> None:
        self.seconds = seconds
        self.deadline = math.inf
        self._scopes: set[anyio.CancelScope] = set()
        self._idle = asyncio.Event()  # plain asyncio: this may be built outside a running loop
        self._idle.set()

    @property
    def began(self) -> bool:
        return self.deadline != math.inf

    def begin(self) -> None:
        """Shutdown begins: shielded blocks, running or still to come, end ``seconds`` from now at the latest."""
        if self.began:
            return
        self.deadline = anyio.current_time() + self.seconds
        for scope in self._scopes:
            scope.deadline = self.deadline

    @contextmanager
    def shielded(self) -> Iterator[anyio.CancelScope]:
        """A block that cancellation does not interrupt; ``scope.cancelled_caught`` if the deadline did."""
        scope = anyio.CancelScope(shield=True, deadline=self.deadline)
        self._scopes.add(scope)
        self._idle.clear()
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._idle.set()

    async def wait(self) -> None:
        """Until no shielded block is running, or the deadline."""
        with anyio.CancelScope(deadline=self.deadline):
            await self._idle.wait()
