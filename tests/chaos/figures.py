"""What a chaos test measures: every delivery a receiver got, the figures they come to, the
statuses of every request, and the verdict against the bounds."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


@dataclass
class Arrival:
    webhook_id: str
    seq: int
    body: bytes
    at: float
    port: int  # the sender's source port: which process sent it


class Receiver:
    """Callbacks ``/cb/{i}`` that echo every challenge and record every delivery, by subscription.

    Each answer waits ``delay`` seconds, so a fan-out lasts long enough for a fault to land in it.
    """

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.verified: set[str] = set()
        self.arrivals: dict[str, list[Arrival]] = defaultdict(list)
        self.in_flight: dict[int, int] = defaultdict(int)  # source port -> deliveries not answered yet
        self.app = Starlette(routes=[Route("/{kind}/{i}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        key = f"{request.path_params['kind']}/{request.path_params['i']}"
        if request.method == "GET":
            self.verified.add(key)
            return PlainTextResponse(request.query_params["hub.challenge"])
        h, port = request.headers, request.client.port if request.client else 0
        self.record(key, h["webhook-id"], int(h["x-hub-sequence"]), await request.body(), port)
        self.in_flight[port] += 1
        try:
            await anyio.sleep(self.delay)
        finally:
            self.in_flight[port] -= 1
        return Response(status_code=204)

    def record(self, key: str, webhook_id: str, seq: int, body: bytes, port: int) -> None:
        self.arrivals[key].append(Arrival(webhook_id, seq, body, time.monotonic(), port))

    def count(self) -> int:
        return sum(len(a) for a in self.arrivals.values())


@dataclass
class Figures:
    """What a fan-out under a fault came to, for subscriptions ``keys`` and the publishes that got 2xx."""

    expected: int = 0
    missing: int = 0
    duplicates: int = 0  # the same webhook-id again: subscribers can drop these
    new_id_duplicates: int = 0  # the same publish under another webhook-id: they cannot
    out_of_order: int = 0
    extra: int = 0  # deliveries of publishes that were cut off (no 2xx): allowed, counted
    done_at: float | None = None

    @classmethod
    def of(cls, receiver: Receiver, keys: list[str], accepted: list[bytes]) -> Figures:
        f = cls(expected=len(keys) * len(accepted))
        wanted = set(accepted)
        rank = {body: n for n, body in enumerate(accepted)}
        last = 0.0
        for key in keys:
            arrivals = receiver.arrivals.get(key, [])
            seen: dict[str, Arrival] = {}
            top = -1
            for a in arrivals:
                if a.webhook_id in seen:
                    f.duplicates += 1
                    continue
                seen[a.webhook_id] = a
                if a.seq < top:  # a new delivery after a later one of the same subscription
                    f.out_of_order += 1
                top = max(top, a.seq)
            firsts = [a for a in seen.values() if a.body in wanted]
            f.new_id_duplicates += len(firsts) - len({a.body for a in firsts})
            f.extra += len(seen) - len(firsts)
            got = {a.body for a in firsts}
            f.missing += len(wanted - got)
            if [rank[a.body] for a in firsts] != sorted(rank[a.body] for a in firsts):
                f.out_of_order += 1
            if firsts:
                last = max(last, max(a.at for a in firsts))
        f.done_at = last if f.missing == 0 and f.expected else None
        return f

    def done(self) -> bool:
        return self.missing == 0


async def settle(receiver: Receiver, keys: list[str], accepted: list[bytes], timeout: float) -> Figures:
    """Wait up to ``timeout`` seconds for every accepted publish to reach every subscriber; the figures."""
    deadline = time.monotonic() + timeout
    while True:
        figures = Figures.of(receiver, keys, accepted)
        if figures.done() or time.monotonic() > deadline:
            return figures
        await anyio.sleep(0.05)


class Tally:
    """Statuses of the requests a test made; a transport failure or a timeout is counted by its name."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, kind: str, outcome: int | str) -> None:
        self.counts[kind][str(outcome)] += 1

    def total(self, outcome: str) -> int:
        return sum(c.get(outcome, 0) for c in self.counts.values())

    def __str__(self) -> str:
        return "; ".join(f"{k}: {dict(sorted(v.items()))}" for k, v in sorted(self.counts.items()))

    __repr__ = __str__


class _Phased(Tally):
    def __init__(self, inner: Tally, phase: str) -> None:
        self.inner, self.phase = inner, phase

    def add(self, kind: str, outcome: int | str) -> None:
        self.inner.add(f"{kind} {self.phase}", outcome)


async def judge(
    title: str, figures: Figures, since: float, bound: float, tally: Tally, database_url: str, **more: object
) -> None:
    """Print the figures of a fan-out under a fault, then assert them: nothing accepted missing, all of
    it within ``bound`` seconds of ``since``, order per subscription held, no 500. When deliveries are
    missing, what is left in the outbox is printed too."""
    took = None if figures.done_at is None else round(figures.done_at - since, 1)
    if figures.missing:
        more["outbox_left"] = await outbox_pending(database_url)
    report(
        title,
        deliveries=figures.expected,
        missing=figures.missing,
        duplicates=figures.duplicates,
        new_id_duplicates=figures.new_id_duplicates,
        out_of_order=figures.out_of_order,
        cut_off_publishes_delivered=figures.extra,
        seconds_to_all_delivered=took,
        bound=bound,
        requests=tally,
        **more,
    )
    assert figures.missing == 0, f"{figures.missing} of {figures.expected} deliveries missing"
    assert took is not None and took <= bound, f"everything delivered after {took} s, bound {bound} s"
    assert figures.out_of_order == 0
    assert figures.new_id_duplicates == 0
    assert tally.total("500") == 0, tally
    assert tally.total("unanswered") == 0, tally


def report(title: str, **figures: object) -> str:
    line = f"\n[chaos] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    return line


async def outbox_pending(database_url: str) -> list[tuple[object, ...]]:
    """What is left in the outbox, for a post-mortem of missing deliveries: per state, attempts,
    claimed or not and last error, how many rows and how soon the earliest is due (seconds)."""
    from sqlalchemy import text

    from reversehub.core import db

    now = time.time()
    engine = db.create_engine(database_url)
    try:
        async with engine.connect() as conn:
            query = text(
                "select state, attempts, claim_token is not null, substr(coalesce(last_error, ''), 1, 60),"
                " count(*), min(next_attempt_at) from hub_deliveries where state != 'delivered'"
                " group by 1, 2, 3, 4 order by 5 desc limit 10"
            )
            rows = (await conn.execute(query)).all()
    finally:
        await engine.dispose()
    return [(*row[:5], round(row[5] - now, 1)) for row in rows]
