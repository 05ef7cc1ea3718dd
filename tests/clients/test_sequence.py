"""Updates in X-Hub-Sequence order, each once; gaps filled or reported (clients/sequence.py).

The hub side is played by :class:`Hub` below, which follows what reversehub's ``/hub/replay`` and
``/hub/status`` promise: a replay queues again what is kept after ``since`` and not pending, and
sends it in order; ``pending`` counts what is on its way. The same flows over a real server are
in tests/live/test_durable_subscriber.py.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from clients.sequence import Sequencer
from clients.update import Update
from tests.support import wait_for

pytestmark = pytest.mark.anyio


def update(seq: int) -> Update:
    return Update("t", str(seq).encode(), "text/plain", httpx.Headers({"x-hub-sequence": str(seq)}))


class Hub:
    def __init__(self, kept: list[int] | None = None, pending: int = 0) -> None:
        self.kept = kept or []
        self.pending_count = pending
        self.replays: list[int] = []
        self.asked = 0  # pending() calls
        self.sequencer: Sequencer | None = None
        self.sent: list[asyncio.Task[None]] = []

    async def replay(self, since: int) -> int:
        self.replays.append(since)
        again = [seq for seq in self.kept if seq > since]
        self.sent.append(asyncio.create_task(self._send(again)))
        return len(again)

    async def _send(self, seqs: list[int]) -> None:
        assert self.sequencer is not None
        for seq in seqs:
            await self.sequencer.offer(seq, update(seq))

    async def pending(self) -> int:
        self.asked += 1
        return self.pending_count


class App:
    def __init__(self) -> None:
        self.handled: list[int] = []
        self.persisted: list[int] = []
        self.gaps: list[tuple[int, int | None]] = []
        self.fail = False

    async def handle(self, u: Update) -> None:
        if self.fail:
            raise RuntimeError("callback failed on purpose")
        assert u.seq is not None
        self.handled.append(u.seq)

    def persist(self, seq: int) -> None:
        self.persisted.append(seq)

    async def report(self, first: int, last: int | None) -> None:
        self.gaps.append((first, last))


def sequencer(app: App, hub: Hub, last: int = 0) -> Sequencer:
    seq = Sequencer(last, app.handle, app.persist, app.report, hub.replay, hub.pending, quiet=0.05, quiet_max=0.1)
    hub.sequencer = seq
    return seq


async def test_in_order_each_once() -> None:
    app, hub = App(), Hub()
    seq = sequencer(app, hub, last=1)
    for n in (1, 2, 3, 2, 3):
        await seq.offer(n, update(n))
    assert (app.handled, app.persisted, hub.replays, app.gaps) == ([2, 3], [2, 3], [], [])
    await seq.aclose()


async def test_a_gap_is_filled_from_the_replay_and_held_updates_follow() -> None:
    app, hub = App(), Hub(kept=[2, 3, 4])
    seq = sequencer(app, hub)
    await seq.offer(1, update(1))
    await seq.offer(4, update(4))  # 2 and 3 are not on their way: held until they are
    assert app.handled == [1] and seq.held == [4]
    await wait_for(lambda: app.handled == [1, 2, 3, 4])
    assert hub.replays == [1] and app.gaps == [] and seq.held == []
    await seq.aclose()


async def test_what_the_hub_no_longer_holds_is_reported_in_its_place() -> None:
    app, hub = App(), Hub(kept=[4])
    seq = sequencer(app, hub)
    await seq.offer(1, update(1))
    await seq.offer(4, update(4))
    await wait_for(lambda: app.handled == [1, 4])
    assert app.gaps == [(2, 3)] and app.persisted == [1, 3, 4]
    await seq.aclose()


async def test_nothing_is_reported_while_the_hub_has_deliveries_pending() -> None:
    app, hub = App(), Hub(pending=2)
    seq = sequencer(app, hub)
    seq.expect(2)  # the hub's status: it numbered 1 and 2, both on their way
    await wait_for(lambda: hub.asked >= 3)  # asked again and again, and each time: "pending"
    assert app.gaps == []
    await seq.offer(1, update(1))
    await seq.offer(2, update(2))
    assert app.handled == [1, 2] and app.gaps == []
    await seq.aclose()


async def test_a_tail_the_hub_numbered_but_never_queued_is_reported() -> None:
    app, hub = App(), Hub()
    seq = sequencer(app, hub, last=1)
    seq.expect(5)  # skipped while too many were pending: numbered, never queued
    await wait_for(lambda: app.gaps == [(2, 5)])
    assert seq.last == 5 and app.persisted == [5]
    await seq.aclose()


async def test_a_failing_callback_is_not_acknowledged_and_not_skipped() -> None:
    app, hub = App(), Hub()
    seq = sequencer(app, hub)
    app.fail = True
    with pytest.raises(RuntimeError):
        await seq.offer(1, update(1))  # the subscriber answers 500: the hub retries it
    assert seq.last == 0 and app.persisted == []
    app.fail = False
    await seq.offer(1, update(1))
    assert app.handled == [1]
    await seq.aclose()
