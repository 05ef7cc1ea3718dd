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
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub import store
from hub.grace import Grace

logger = logging.getLogger(__name__)

MAX_BATCH = 500

Waiting = tuple[store.Activation, "asyncio.Future[tuple[int, int]]"]


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
            (result,) = await store.activate_many(self._sessions, [item])
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

    async def _commit(self, batch: list[Waiting]) -> None:
        try:
            results = await store.activate_many(self._sessions, [item for item, _ in batch])
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
