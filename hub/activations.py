"""Verified subscriptions written in batches: one transaction for all that are waiting.

Each activation's rules are :func:`hub.store.activate_many`'s, applied in the order the
verifications finished. What a batch saves is the per-transaction cost (a connection, the write
lock, the topic lock, a commit): with 64 verifications in flight that was most of the CPU an
activation took. Nobody waits for a batch to fill: the writer takes whatever is waiting as soon
as the previous transaction has committed, so a lone subscribe is written at once.

Shutting down: every item here belongs to a callback that has already echoed its challenge with a
2xx, so its subscriber counts itself subscribed (WebSub 5.3.1) and will hear nothing more. Losing
the item would leave it subscribed in its own eyes only. So cancelling the writer does not drop
what it holds: the batch being written is finished, and the items still waiting are written
before the writer returns, all inside the :class:`~hub.grace.Grace` the verifier shares with us.
Only what is still unwritten when that grace runs out is given up, and logged.

A database that cannot take the write (a full disk, a read-only file, a server down:
:func:`reversehub.core.db.unavailable`) does not lose an item either, for the same reason: the
transaction is tried again, with backoff, until it commits. The items wait in memory meanwhile,
bounded by the verifier's cap on verifications in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub import store
from hub.grace import Grace
from reversehub.core import db
from reversehub.core.backoff import backoff

logger = logging.getLogger(__name__)

MAX_BATCH = 500
RETRY_BASE = 0.2  # seconds before the first retry of a write the database could not take
RETRY_MAX = 30.0

T = TypeVar("T")
Waiting = tuple[store.Activation, "asyncio.Future[tuple[int, int]]"]


async def until_stored(write: Callable[[], Awaitable[T]], what: str) -> T:
    """``await write()``, tried again with backoff while the database cannot take it (see the module
    docstring); any other error is raised. ``what`` names the write in the log."""
    attempt = 0
    while True:
        try:
            return await write()
        except Exception as exc:
            if not db.unavailable(exc):
                raise
            attempt += 1
            delay = backoff(attempt, RETRY_BASE, RETRY_MAX)
            # The driver's message, not SQLAlchemy's text of the error: that quotes the parameters.
            reason = getattr(exc, "orig", None) or exc
            logger.warning("storing %s failed (%s); trying again in %.1f s", what, reason, delay)
        await anyio.sleep(delay)


class Activations:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], grace: Grace | None = None) -> None:
        self._sessions = sessions
        self._grace = grace or Grace()
        self._waiting: list[Waiting] = []
        self._wake = asyncio.Event()
        self._running = False

    async def activate(self, item: store.Activation) -> tuple[int, int]:
        """Store one verified subscription; returns (subscription id, deliveries queued)."""
        if not self._running:  # no writer (run() not started, or stopped): write it here
            (result,) = await self._stored([item])
            return result
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        self._running = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._write_waiting()
        finally:
            # Cancelled (shutting down): from here on activate() writes its own item, and what
            # was handed to us is written now rather than dropped (see the module docstring).
            self._running = False
            self._grace.begin()
            await self._write_waiting()

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
            await self._write(batch)

    async def _write(self, batch: list[Waiting]) -> None:
        """One transaction for ``batch``; a cancellation waits for its commit (within the grace)."""
        try:
            with self._grace.shielded():
                await self._commit(batch)
        finally:
            lost = [future for _, future in batch if not future.done()]
            if lost:  # not written within the grace: nobody will write these
                logger.error("shutting down: %d verified subscriptions were not stored in time", len(lost))
                for future in lost:
                    future.set_exception(TimeoutError("not stored within the shutdown grace"))

    async def _stored(self, items: list[store.Activation]) -> list[tuple[int, int]]:
        return await until_stored(
            lambda: store.activate_many(self._sessions, items), f"{len(items)} verified subscriptions"
        )

    async def _commit(self, batch: list[Waiting]) -> None:
        try:
            results = await self._stored([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            # One bad item must not fail the others: each on its own, so each gets its own outcome.
            logger.warning("a batch of %d activations failed; writing them one by one", len(batch))
            for waiting in batch:
                await self._commit([waiting])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
