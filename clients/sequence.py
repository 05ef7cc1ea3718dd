"""Updates in ``X-Hub-Sequence`` order, each once, and gaps filled from the hub or reported.

The hub numbers a subscription's deliveries 1, 2, 3... and sends only the oldest pending one at a
time, so a number that jumps means the ones in between are not on their way: the hub gave up
retrying them, it sent them to a process of ours that died holding them, it skipped them (too many
pending) or pruned them. The :class:`Sequencer` then holds the later updates (acknowledged: the hub
would otherwise keep resending them and never send the missing ones), asks for a replay of
everything after the last update handled, and passes updates on in order as the gap fills.

A range is declared lost only when the hub proves it: after a replay after ``last`` was asked for,
the hub has nothing pending for the subscription, so everything it still kept has reached us.
What is still missing then is reported (``report(first, last)``) in its place among the updates,
never skipped in silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from clients.errors import ClientError
from clients.update import Update

logger = logging.getLogger(__name__)


class Sequencer:
    """Passes updates to ``handle`` in sequence order, each once; fills and reports gaps.

    ``last`` is the sequence number of the last update handled; ``persist(seq)`` is called (in a
    worker thread) after each one, before its delivery is acknowledged. Missing updates come from
    ``replay(since)`` (how many deliveries the hub queued again) and ``pending()`` (how many it has
    pending for the subscription): a reversehub hub's ``/hub/replay`` and ``/hub/status``
    (:class:`clients.ownership.Owner`). ``quiet`` is how long no
    update may arrive before the hub is asked about a gap again (doubling while it still has
    deliveries pending, up to ``quiet_max``).
    """

    def __init__(
        self,
        last: int,
        handle: Callable[[Update], Awaitable[None]],
        persist: Callable[[int], None],
        report: Callable[[int, int | None], Awaitable[None]],
        replay: Callable[[int], Awaitable[int]],
        pending: Callable[[], Awaitable[int]],
        *,
        quiet: float = 2.0,
        quiet_max: float = 30.0,
    ) -> None:
        self.last = last
        self.expected = last  # the highest sequence number known to exist
        self._handle = handle
        self._persist = persist
        self._report = report
        self._replay = replay
        self._pending = pending
        self._quiet = quiet
        self._quiet_max = quiet_max
        self._held: dict[int, Update] = {}
        self._lock = asyncio.Lock()
        self._arrived = asyncio.Event()
        self._replayed = False  # a replay after some seq <= last was asked for in this gap
        self._filler: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def held(self) -> list[int]:
        """Sequence numbers received but waiting for a gap below them to fill."""
        return sorted(self._held)

    async def offer(self, seq: int, update: Update) -> None:
        """One delivery. Returns when it may be acknowledged: handled, held, or a duplicate.

        Raises what ``handle`` raised for the next update in order (so the hub retries it)."""
        async with self._lock:
            self._arrived.set()
            if seq <= self.last or seq in self._held:
                return  # a duplicate: acknowledged, not handled again
            self.expected = max(self.expected, seq)
            if seq == self.last + 1:
                await self._handle(update)
                await self._advance(seq)
                await self._drain()
            else:
                self._held[seq] = update
        self._watch()

    def expect(self, through: int) -> None:
        """The hub numbered updates up to ``through`` (its status): fetch or report what does not come."""
        if through > self.expected:
            self.expected = through
        self._watch()

    async def reset(self, last: int) -> None:
        """Number from ``last`` again (the hub made a new subscription, whose numbers start at 1)."""
        async with self._lock:
            self._held.clear()
            self.expected = last
            await self._advance(last)

    async def aclose(self) -> None:
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            await asyncio.gather(self._filler, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------

    def _gap(self) -> bool:
        return bool(self._held) or self.expected > self.last

    def _watch(self) -> None:
        if self._closed or not self._gap() or (self._filler is not None and not self._filler.done()):
            return
        self._filler = asyncio.create_task(self._fill(), name="sequence-gap")

    async def _advance(self, seq: int) -> None:
        await asyncio.to_thread(self._persist, seq)
        self.last = seq

    async def _drain(self) -> None:
        """Handle the held updates that are next in order (the caller holds the lock)."""
        while (update := self._held.pop(self.last + 1, None)) is not None:
            try:
                await self._handle(update)
            except Exception:
                # Already acknowledged, so the hub will not retry it: a replay after `last` brings
                # it back (the gap it leaves is filled like any other).
                logger.exception("subscriber callback failed on a held update; asking the hub for it again")
                self._replayed = False
                return
            await self._advance(self.last + 1)

    async def _fill(self) -> None:
        quiet = self._quiet
        while self._gap() and not self._closed:
            try:
                if not self._replayed:
                    queued = await self._replay(self.last)
                    self._replayed = True
                    if queued:
                        await self._until_quiet(self._quiet)
                        continue
                if await self._pending():
                    # On its way (or in the hub's backoff): not lost. Ask again later.
                    await self._until_quiet(quiet)
                    quiet = min(quiet * 2, self._quiet_max)
                    continue
            except (httpx.HTTPError, ClientError, ValueError) as exc:
                logger.warning("could not ask the hub about missing updates (%s); trying again", exc)
                await self._until_quiet(quiet)
                quiet = min(quiet * 2, self._quiet_max)
                continue
            async with self._lock:
                # Replayed, and nothing pending: whatever the hub kept after `last` has reached
                # us, so what is still missing below the held updates is not kept anywhere.
                if not self._gap():
                    break
                first = self.last + 1
                last = min(self._held) - 1 if self._held else self.expected
                if last >= first:
                    await self._report(first, last)
                    await self._advance(last)
                await self._drain()
        self._replayed = False

    async def _until_quiet(self, seconds: float) -> None:
        """Wait until no update arrived for ``seconds`` (or the gap closed)."""
        while True:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), seconds)
            except TimeoutError:
                return
            if not self._gap():
                return
