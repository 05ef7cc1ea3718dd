"""Verified subscriptions written in batches: one transaction for all that are waiting.

Each activation's rules are :func:`hub.store.activate_many`'s, applied in the order the
verifications finished. What a batch saves is the per-transaction cost (a connection, the write
lock, the topic lock, a commit): with 64 verifications in flight that was most of the CPU an
activation took. Nobody waits for a batch to fill: the writer takes whatever is waiting as soon
as the previous transaction has committed, so a lone subscribe is written at once.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub import store

logger = logging.getLogger(__name__)

MAX_BATCH = 500

Waiting = tuple[store.Activation, "asyncio.Future[tuple[int, int]]"]


class Activations:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
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
                while self._waiting:
                    batch = self._waiting[:MAX_BATCH]
                    del self._waiting[:MAX_BATCH]
                    await self._write(batch)
        finally:
            self._running = False
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()

    async def _write(self, batch: list[Waiting]) -> None:
        try:
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
                    await self._write([waiting])
                return
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            for _, future in batch:  # cancelled half-way (shutting down): nobody will write these
                if not future.done():
                    future.cancel()
