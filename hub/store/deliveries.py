"""Outbox rows: a payload stored once, a delivery row per subscriber, claimed, sent, settled, replayed.

The outbox is shared by every ``serve`` process on the database. A worker claims due rows by
writing a claim token, its worker id and a lease (``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL; SQLite has one writer, so the conditional UPDATE alone settles races). A claim holds
while its worker's heartbeat is fresh (:mod:`hub.store.workers`) and its lease runs (the worker
renews the leases of what it holds long); the claim query takes over at once the claims of a worker
whose heartbeat is stale, and any claim whose lease ran out. Only the oldest pending delivery of a
subscription is ever claimable, which keeps deliveries in order per subscription.

Outcomes, releases and deferrals are written only for rows still held under the claim token they
name: a worker cut off from the database long enough to be judged dead cannot settle a row that
another worker has claimed since (at-least-once: that row may be sent twice, never lost).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from hub.models import Delivery, DeliveryState, Payload, Subscription, SubscriptionState
from hub.store import workers
from hub.store._sql import deliveries_table, dialect, writing
from hub.store.topics import bump_topic

# What one attempt came to: delivered (2xx), retry (later), failed (given up), gone (410: the
# subscription ends). Not a row state: "retry" leaves the row pending, "gone" cancels it.
Settled = Literal["delivered", "retry", "failed", "gone"]
HURRY_CHUNK = 200  # callback prefixes per statement (SQLite allows 999 bound parameters before 3.32)


@dataclass(frozen=True)
class Enqueued:
    """A stored payload and how many deliveries of it were queued."""

    payload_id: int
    deliveries: int
    payload: Payload | None = None  # as stored (not attached to a session)


async def enqueue(
    s: AsyncSession,
    topic: str,
    content_type: str,
    body: bytes,
    now: float,
    max_pending: int = 0,
    topic_values: Mapping[str, object] | None = None,
) -> Enqueued:
    """Store ``body`` once and a pending delivery for every active subscriber, in ``s``'s transaction.

    The topic's row gets a new version and ``topic_values``, in the statement that also holds it
    for this transaction (:func:`bump_topic`): a publish is four statements, and each one costs
    the publisher's 2xx and the first delivery a round trip to the database.

    A subscription that already has ``max_pending`` deliveries pending (a callback that has been
    failing for a while) gets no new one: its sequence number still advances, so the subscriber
    sees the gap, and its status records the skip (``failed``, ``last_failure``). Nothing is
    dropped silently, and one dead callback cannot grow the outbox without bound.
    """
    await bump_topic(s, topic, now, **(topic_values or {}))
    stored = dict(uid=secrets.token_hex(8), topic=topic, content_type=content_type, body=body, created_at=now)
    payload_id = (await s.execute(insert(Payload).values(**stored).returning(Payload.id))).scalar_one()
    # Every active subscriber takes its next sequence number, and the deliveries are made from the
    # numbers as stored, in SQL: no row goes through Python, so the publisher's 2xx does not wait
    # on a round trip per subscriber. This transaction holds the topic (bump_topic: no subscription of it can
    # become active meanwhile) and, on PostgreSQL, the rows the UPDATE changed, so the SELECT finds
    # exactly those rows and a concurrent publish can never hand out a number twice.
    active = and_(
        Subscription.topic == topic, Subscription.state == SubscriptionState.ACTIVE, Subscription.expires_at > now
    )
    advanced = cast(
        "CursorResult[Any]",
        await s.execute(
            update(Subscription)
            .where(active)
            .values(seq=Subscription.seq + 1)
            .execution_options(synchronize_session=False)
        ),
    ).rowcount
    fixed = [literal(DeliveryState.PENDING.value), literal(0), literal(now), literal(now)]
    due = select(literal(payload_id), Subscription.id, Subscription.seq, *fixed).where(active)
    if max_pending > 0:
        # Full subscriptions as a subquery, never as a list of ids: one bound parameter per id
        # would fail past 32,767 of them on PostgreSQL (asyncpg), and the statement would grow
        # with the number of dead callbacks.
        counted = aliased(Subscription)
        full = (
            select(Delivery.subscription_id)
            .join(counted, counted.id == Delivery.subscription_id)
            .where(counted.topic == topic, Delivery.state == DeliveryState.PENDING)
            .group_by(Delivery.subscription_id)
            .having(func.count() >= max_pending)
        )
        due = due.where(Subscription.id.not_in(full))
    columns = ["payload_id", "subscription_id", "seq", "state", "attempts", "next_attempt_at", "created_at"]
    inserted = cast("CursorResult[Any]", await s.execute(insert(Delivery).from_select(columns, due)))
    queued = inserted.rowcount
    if queued < advanced:
        # The skipped are exactly the active subscriptions this payload has no delivery for (not
        # the full ones counted again, which a delivery finishing meanwhile could change).
        got = select(Delivery.subscription_id).where(Delivery.payload_id == payload_id)
        await s.execute(
            update(Subscription)
            .where(active, Subscription.id.not_in(got))
            .values(
                failed=Subscription.failed + 1,
                last_failure_at=now,
                last_failure=f"skipped: {max_pending} deliveries already pending for this subscription",
            )
            .execution_options(synchronize_session=False)
        )
    return Enqueued(payload_id, queued, Payload(id=payload_id, **stored))


@dataclass(frozen=True)
class Claimed:
    """A delivery this worker claimed, with what sending it needs of its subscription."""

    id: int
    payload_id: int
    subscription_id: int
    seq: int
    attempts: int
    created_at: float
    callback: str
    topic: str
    secret: str | None
    token: str  # the claim's token: what settles this row must name it


async def claim(
    sessions: async_sessionmaker[AsyncSession],
    limit: int,
    lease_seconds: float,
    worker: str | None = None,
    stale_seconds: float | None = None,
    skip_origins: Collection[str] = (),
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries for ``worker``, only the oldest pending one of each subscription.

    First the claims of dead workers (heartbeat older than ``stale_seconds``), then rows due by
    ``next_attempt_at`` (never claimed, retries whose time came, and claims whose lease of
    ``lease_seconds`` ran out), in one transaction. A claim made without a worker holds only for
    its lease.

    Rows whose callback is on one of ``skip_origins`` (``scheme://host:port`` as the callbacks spell
    it) are left for later or for another process: the worker's hosts that cannot take more now. A
    row claimed for such a host would only wait in this process, out of every other process's reach,
    and fill the room this worker has for the hosts that answer."""
    now = time.time()
    token = secrets.token_hex(8)
    first = _first(skip_origins)
    values = _claim_values(token, worker, now, lease_seconds)
    claimed = 0
    async with writing(sessions) as s:
        if worker is not None and stale_seconds is not None:
            # Found by the dead worker's id (an index), not among every pending row: most of the
            # time there is no dead worker and this costs one probe of a small table.
            orphans = (
                select(Delivery.id)
                .where(
                    Delivery.claim_worker.in_(workers.dead_workers(s, stale_seconds)),
                    Delivery.claim_token.is_not(None),
                    Delivery.state == DeliveryState.PENDING,
                    first,
                )
                .order_by(Delivery.id)
                .limit(limit)
            )
            claimed = await _take(s, orphans, values)
        if claimed < limit:
            due = (
                select(Delivery.id)
                .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now, first)
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit - claimed)
            )
            claimed += await _take(s, due, values)
        if not claimed:
            return []
        return await _claimed(s, token)


async def claim_payload(
    s: AsyncSession,
    payload_id: int,
    limit: int,
    lease_seconds: float,
    worker: str,
    skip_origins: Collection[str] = (),
) -> list[Claimed]:
    """Claim for ``worker``, in ``s``'s transaction (the publish that just queued them), up to
    ``limit`` deliveries of ``payload_id`` that are the oldest pending one of their subscription.

    The publishing process sends them without waiting for its outbox to find them: the claim
    travels with the publish's own commit, so the first delivery costs no further transaction and
    no wake-up. Rows past ``limit``, those behind an earlier pending delivery, and those of hosts the
    worker cannot take more for (``skip_origins``, as in :func:`claim`) stay for :func:`claim` (by
    any process)."""
    token = secrets.token_hex(8)
    first = _first(skip_origins)
    chosen = (
        select(Delivery.id)
        .where(Delivery.payload_id == payload_id, Delivery.state == DeliveryState.PENDING, first)
        .order_by(Delivery.id)
        .limit(limit)
    )
    if not limit or not await _take(s, chosen, _claim_values(token, worker, time.time(), lease_seconds)):
        return []
    return await _claimed(s, token)


def _first(skip_origins: Collection[str] = ()) -> Any:
    """Only the oldest pending delivery of a subscription may be claimed: deliveries go in order;
    none whose callback is on one of ``skip_origins``."""
    earlier = aliased(Delivery)
    first = ~exists().where(
        earlier.subscription_id == Delivery.subscription_id,
        earlier.state == DeliveryState.PENDING,
        earlier.seq < Delivery.seq,
    )
    if skip_origins:
        first = and_(first, ~exists().where(Subscription.id == Delivery.subscription_id, on_origins(skip_origins)))
    return first


def _claim_values(token: str, worker: str | None, now: float, lease_seconds: float) -> dict[str, object]:
    # A claim pushes the row's next attempt out to the lease's end: rows in flight drop out of the
    # due index, and a claim nobody renews falls due again by itself.
    until = now + lease_seconds
    return dict(claim_token=token, claim_worker=worker, claimed_until=until, next_attempt_at=until)


async def _claimed(s: AsyncSession, token: str) -> list[Claimed]:
    """The rows claimed under ``token``, with what sending them needs of their subscriptions."""
    rows = (
        await s.execute(
            select(
                Delivery.id,
                Delivery.payload_id,
                Delivery.subscription_id,
                Delivery.seq,
                Delivery.attempts,
                Delivery.created_at,
                Subscription.callback,
                Subscription.topic,
                Subscription.secret,
            )
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .where(Delivery.claim_token == token)
            .order_by(Delivery.id)  # oldest first, as chosen (PostgreSQL has no natural order)
        )
    ).all()
    return [Claimed(*row, token) for row in rows]


def on_origins(origins: Collection[str]) -> ColumnElement[bool]:
    """Subscriptions whose callback is on one of ``origins`` (``scheme://host:port``): the origin
    itself, or followed by a path, a query or a fragment (``http://h:80`` is not ``http://h:8080``)."""
    matches: list[ColumnElement[bool]] = []
    for origin in sorted(origins):
        escaped = _escape_like(origin)
        matches.append(Subscription.callback == origin)
        matches += [Subscription.callback.like(escaped + c + "%", escape="\\") for c in "/?#"]
    return or_(*matches)


def _escape_like(text: str) -> str:
    """``text`` as a literal in a LIKE pattern (escape character ``\\``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _take(s: AsyncSession, chosen: Select[Any], values: Mapping[str, object]) -> int:
    """Claim the rows ``chosen`` selects; returns how many. One UPDATE picks and claims (the choice as
    a subquery, not a list of ids fetched first): a round trip less before the first delivery of
    every publish. On PostgreSQL the choice skips rows another worker is claiming right now."""
    if dialect(s) == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
    taken = await s.execute(
        update(Delivery)
        .where(Delivery.id.in_(chosen.correlate(None).scalar_subquery()))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return cast("CursorResult[Any]", taken).rowcount


async def renew(
    sessions: async_sessionmaker[AsyncSession], held: Sequence[tuple[int, str]], lease_seconds: float
) -> int:
    """Extend the lease of rows still held under these (id, token) claims; returns how many."""
    if not held:
        return 0
    until = time.time() + lease_seconds
    t = deliveries_table
    async with writing(sessions) as s:
        result = await s.execute(
            update(t)
            .where(t.c.id == bindparam("d_id"), t.c.claim_token == bindparam("d_token"))
            .values(claimed_until=until, next_attempt_at=until),
            [{"d_id": i, "d_token": token} for i, token in held],
        )
        return max(0, cast("CursorResult[Any]", result).rowcount)  # the sum, where the driver counts


async def payloads(sessions: async_sessionmaker[AsyncSession], ids: Iterable[int]) -> dict[int, Payload]:
    """The payloads with these ids, by id."""
    async with sessions() as s:
        return {p.id: p for p in (await s.execute(select(Payload).where(Payload.id.in_(list(ids))))).scalars()}


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. ``retry_at`` None: final (delivered, failed or gone).

    ``token`` is the claim the attempt was made under: the outcome is written only while the row is
    still held under it."""

    id: int
    subscription_id: int
    token: str
    state: Settled
    status: int | None
    error: str | None
    retry_at: float | None = None


_FINAL_STATE = {"failed": DeliveryState.FAILED, "gone": DeliveryState.CANCELLED}
_UNCLAIMED = {"claim_token": None, "claim_worker": None, "claimed_until": None}


async def record(sessions: async_sessionmaker[AsyncSession], outcomes: Sequence[Outcome]) -> None:
    """Write a batch of attempt outcomes in one transaction, each only while its claim holds."""
    now = time.time()
    delivered: dict[tuple[int | None, str], list[int]] = {}  # by status and claim: one UPDATE ... IN each (few)
    for o in outcomes:
        if o.state == "delivered":
            delivered.setdefault((o.status, o.token), []).append(o.id)
    async with writing(sessions) as s:
        for (status, token), ids in delivered.items():
            await s.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids), Delivery.claim_token == token)
                .values(
                    state=DeliveryState.DELIVERED,
                    attempts=Delivery.attempts + 1,
                    finished_at=now,
                    last_status=status,
                    **_UNCLAIMED,
                )
            )
        retries = [o for o in outcomes if o.state == "retry"]
        t = deliveries_table
        if retries:
            await s.execute(
                update(t)
                .where(t.c.id == bindparam("d_id"), t.c.claim_token == bindparam("d_token"))
                .values(
                    attempts=t.c.attempts + 1,
                    next_attempt_at=bindparam("d_next"),
                    last_status=bindparam("d_status"),
                    last_error=bindparam("d_error"),
                    **_UNCLAIMED,
                ),
                [
                    {
                        "d_id": o.id,
                        "d_token": o.token,
                        "d_next": o.retry_at if o.retry_at is not None else now,
                        "d_status": o.status,
                        "d_error": (o.error or "")[:1000] or None,
                    }
                    for o in retries
                ],
            )
        # Final outcomes other than delivered are rare: one statement each, so that what follows
        # (the subscription's failure count, its end) happens only for a row this claim settled.
        gone: set[int] = set()
        for o in outcomes:
            if o.state not in _FINAL_STATE:
                continue
            settled = await s.execute(
                update(Delivery)
                .where(Delivery.id == o.id, Delivery.claim_token == o.token)
                .values(
                    state=_FINAL_STATE[o.state],
                    attempts=Delivery.attempts + 1,
                    finished_at=now,
                    last_status=o.status,
                    last_error=(o.error or "")[:1000] or None,
                    **_UNCLAIMED,
                )
            )
            if not cast("CursorResult[Any]", settled).rowcount:
                continue
            if o.state == "gone":
                gone.add(o.subscription_id)
                continue
            await s.execute(
                update(Subscription)
                .where(Subscription.id == o.subscription_id)
                .values(
                    failed=Subscription.failed + 1,
                    last_failure_at=now,
                    last_failure=f"delivery {o.id} given up: {(o.error or o.status or '')}"[:255],
                    updated_at=now,
                )
            )
        if gone:
            ended = sorted(gone)
            await s.execute(
                update(Subscription)
                .where(Subscription.id.in_(ended))
                .values(state=SubscriptionState.GONE, updated_at=now)
            )
            await cancel_pending(s, ended, now, SubscriptionState.GONE)


async def release(
    sessions: async_sessionmaker[AsyncSession], held: Sequence[tuple[int, str]], until: float | None = None
) -> None:
    """Give back the rows still held under these (id, token) claims, due at ``until`` (default: now).
    No attempt is counted: shutting down, or a host saturated here (a deferral)."""
    if not held:
        return
    t = deliveries_table
    async with writing(sessions) as s:
        await s.execute(
            update(t)
            .where(t.c.id == bindparam("d_id"), t.c.claim_token == bindparam("d_token"))
            .values(next_attempt_at=until if until is not None else time.time(), **_UNCLAIMED),
            [{"d_id": i, "d_token": token} for i, token in held],
        )


async def release_worker(sessions: async_sessionmaker[AsyncSession], worker: str) -> int:
    """Give back every claim ``worker`` still holds (it stops): they are due again at once."""
    async with writing(sessions) as s:
        result = await s.execute(
            update(Delivery)
            .where(Delivery.claim_worker == worker, Delivery.state == DeliveryState.PENDING)
            .values(next_attempt_at=time.time(), **_UNCLAIMED)
        )
        return max(0, cast("CursorResult[Any]", result).rowcount)


async def hurry(sessions: async_sessionmaker[AsyncSession], callback_prefixes: Collection[str]) -> int:
    """Make pending deliveries to callbacks under any of ``callback_prefixes`` due now (relay.online).

    One transaction for all of them: a mass registration brings thousands of names online within
    seconds, and a transaction each would compete with the registrations' own writes."""
    if not callback_prefixes:
        return 0
    now = time.time()
    escaped = [_escape_like(p) for p in sorted(callback_prefixes)]
    hurried = 0
    async with writing(sessions) as s:
        for i in range(0, len(escaped), HURRY_CHUNK):
            matches = [Subscription.callback.like(e + "%", escape="\\") for e in escaped[i : i + HURRY_CHUNK]]
            result = await s.execute(
                update(Delivery)
                .where(
                    Delivery.state == DeliveryState.PENDING,
                    Delivery.next_attempt_at > now,
                    Delivery.claim_token.is_(None),  # not in flight
                    Delivery.subscription_id.in_(select(Subscription.id).where(or_(*matches))),
                )
                .values(next_attempt_at=now)
                .returning(Delivery.id)
            )
            hurried += len(result.all())
    return hurried


async def replay(sessions: async_sessionmaker[AsyncSession], sub_id: int, since: int) -> int:
    """Queue again every retained delivery of the subscription with a sequence number above ``since``."""
    now = time.time()
    async with writing(sessions) as s:
        result = await s.execute(
            update(Delivery)
            .where(Delivery.subscription_id == sub_id, Delivery.seq > since, Delivery.state != DeliveryState.PENDING)
            .values(state=DeliveryState.PENDING, next_attempt_at=now, finished_at=None, **_UNCLAIMED)
            .returning(Delivery.id)
        )
        return len(result.all())


async def oldest_retained(sessions: async_sessionmaker[AsyncSession], sub_id: int) -> int | None:
    """The lowest sequence number of the subscription's deliveries still kept (None: none kept)."""
    async with sessions() as s:
        return (
            await s.execute(select(func.min(Delivery.seq)).where(Delivery.subscription_id == sub_id))
        ).scalar_one_or_none()


async def pending_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    """How many deliveries are pending, claimed or not."""
    async with sessions() as s:
        return int((await s.execute(select(func.count()).where(Delivery.state == DeliveryState.PENDING))).scalar_one())


async def prune(sessions: async_sessionmaker[AsyncSession], older_than: float) -> None:
    """Drop finished deliveries and unreferenced payloads past the retention horizon."""
    async with writing(sessions) as s:
        await s.execute(
            delete(Delivery).where(Delivery.state != DeliveryState.PENDING, Delivery.finished_at < older_than)
        )
        await s.execute(
            delete(Payload).where(Payload.created_at < older_than, ~exists().where(Delivery.payload_id == Payload.id))
        )


async def cancel_pending(s: AsyncSession, sub_ids: Sequence[int], now: float, reason: str) -> None:
    """Cancel the pending deliveries of ended subscriptions, in ``s``'s transaction."""
    await s.execute(
        update(Delivery)
        .where(Delivery.subscription_id.in_(sub_ids), Delivery.state == DeliveryState.PENDING)
        .values(state=DeliveryState.CANCELLED, finished_at=now, last_error=f"subscription {reason}")
    )
