"""Rows: subscriptions, topics, payloads and the outbox. Every function is one unit of work.

The outbox is shared by every ``serve`` process on the database. A worker claims due rows by
writing a claim token and a claim deadline (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL;
SQLite has one writer, so the conditional UPDATE alone settles races); a process that dies leaves
claims that expire and are taken over. Only the oldest pending delivery of a subscription is ever
claimable, which keeps deliveries in order per subscription.
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import anyio
import httpx
from sqlalchemy import Table, and_, bindparam, delete, exists, func, insert, literal, or_, select, tuple_, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from hub.models import Delivery, Entry, Payload, Subscription, Topic

ACTIVE = "active"
HURRY_CHUNK = 200  # callback prefixes per statement (SQLite allows 999 bound parameters before 3.32)


def dialect(s: AsyncSession) -> str:
    return str(s.get_bind().dialect.name)


_write_locks: weakref.WeakKeyDictionary[object, anyio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def writing(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A write transaction. On SQLite the hub's writers take turns in-process first: SQLite has one
    writer, and a transaction that finds the database locked backs off by sleeping (busy_timeout),
    which costs far more than waiting for an asyncio lock."""
    bind = sessions.kw.get("bind")
    if bind is not None and bind.dialect.name != "sqlite":
        async with sessions.begin() as s:
            yield s
        return
    lock = _write_locks.get(sessions)
    if lock is None:
        lock = _write_locks[sessions] = anyio.Lock()
    async with lock, sessions.begin() as s:
        yield s


def _insert(session: AsyncSession, table: type) -> object:
    """The dialect's INSERT (with ON CONFLICT). Imported here: the engine has loaded its own dialect
    already, and the other one's modules (about 3 MB for PostgreSQL's) stay out of the process."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


# Subscriptions --------------------------------------------------------------------------------

_subs = cast(Table, Subscription.__table__)
_payloads = cast(Table, Payload.__table__)
_deliveries = cast(Table, Delivery.__table__)
_topics = cast(Table, Topic.__table__)
ACTIVATE_CHUNK = 200  # (topic, callback) pairs per statement: 400 bound parameters

# Built once: a statement object keeps its compiled form's cache key, so executing it again
# costs no expression building (measured: a fresh ORM select per call was ~1 ms of CPU).
_PAIRS = select(_subs.c.id, _subs.c.topic, _subs.c.callback, _subs.c.state, _subs.c.expires_at, _subs.c.seq).where(
    tuple_(_subs.c.topic, _subs.c.callback).in_(bindparam("pairs", expanding=True))
)
_RENEW = (
    update(_subs)
    .where(_subs.c.id == bindparam("s_id"))
    .values(
        secret=bindparam("s_secret"),
        state=ACTIVE,
        lease_seconds=bindparam("s_lease"),
        verified_at=bindparam("s_now"),
        expires_at=bindparam("s_expires"),
        updated_at=bindparam("s_now"),
    )
)
_CREATE = insert(_subs).returning(_subs.c.id, sort_by_parameter_order=True)
_SINCE = (
    select(_payloads.c.id, _payloads.c.topic, _payloads.c.created_at)
    .where(_payloads.c.topic.in_(bindparam("topics", expanding=True)), _payloads.c.created_at >= bindparam("since"))
    .order_by(_payloads.c.id)
)
_ADVANCE = update(_subs).where(_subs.c.id == bindparam("s_id")).values(seq=bindparam("s_seq"))
_HOST_COUNT = (
    select(func.count())
    .where(
        _subs.c.state == ACTIVE,
        _subs.c.callback_host == bindparam("host"),
        _subs.c.callback != bindparam("callback"),
    )
    .scalar_subquery()
)
_FETCHED = select(_topics.c.fetched_at).where(_topics.c.url == bindparam("topic")).scalar_subquery()
_OUTLOOK = select(_HOST_COUNT, _FETCHED)
_OUTLOOK_NO_COUNT = select(literal(0), _FETCHED)


@dataclass(frozen=True)
class Activation:
    """A verified subscribe: ``now`` is when it was verified, ``since`` when its verification went out."""

    topic: str
    callback: str
    secret: str | None
    lease_seconds: int
    now: float
    since: float | None = None


async def activate(
    sessions: async_sessionmaker[AsyncSession],
    topic: str,
    callback: str,
    secret: str | None,
    lease_seconds: int,
    now: float,
    since: float | None = None,
) -> tuple[int, int]:
    """Store a verified subscription (:func:`activate_many` with one)."""
    (result,) = await activate_many(sessions, [Activation(topic, callback, secret, lease_seconds, now, since)])
    return result


async def activate_many(
    sessions: async_sessionmaker[AsyncSession], items: Sequence[Activation]
) -> list[tuple[int, int]]:
    """Store verified subscriptions in one transaction, renewing a pair's row if there is one.

    A subscriber learns it is subscribed when it answers the challenge, a moment before this
    commits; a publish in between would miss it. So a subscription that was not active gets the
    topic's payloads stored since ``since`` (when the verification request went out).
    Returns (subscription id, deliveries queued) for each item, in order. A pair named twice is
    applied twice, in order, as two calls would."""
    results: list[tuple[int, int]] = [(0, 0)] * len(items)
    rounds: list[list[int]] = []  # a pair's n-th occurrence goes in round n
    occurrences: dict[tuple[str, str], int] = {}
    for i, a in enumerate(items):
        n = occurrences.get((a.topic, a.callback), 0)
        occurrences[(a.topic, a.callback)] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(i)
    async with writing(sessions) as s:
        for topic in sorted({a.topic for a in items}):  # one order everywhere: no deadlock between batches
            await lock_topic(s, topic, min(a.now for a in items if a.topic == topic))
        c = await s.connection()  # Core statements on the session's connection: no ORM state to track
        for indices in rounds:
            for start in range(0, len(indices), ACTIVATE_CHUNK):
                chunk = indices[start : start + ACTIVATE_CHUNK]
                for i, result in zip(chunk, await _activate_chunk(c, [items[i] for i in chunk]), strict=True):
                    results[i] = result
    return results


async def _activate_chunk(c: AsyncConnection, items: Sequence[Activation]) -> list[tuple[int, int]]:
    """Activate distinct pairs whose topics this transaction holds (:func:`lock_topic`)."""
    pairs = [(a.topic, a.callback) for a in items]
    found = {(r.topic, r.callback): r for r in await c.execute(_PAIRS, {"pairs": pairs})}
    ids: dict[tuple[str, str], int] = {}
    seqs: dict[tuple[str, str], int] = {}
    renew: list[dict[str, Any]] = []
    create: list[dict[str, Any]] = []
    catch_up: list[Activation] = []  # not active before: gets the payloads since its verification went out
    for a, pair in zip(items, pairs, strict=True):
        row = found.get(pair)
        if not (row is not None and row.state == ACTIVE and row.expires_at > a.now) and a.since is not None:
            catch_up.append(a)
        if row is not None:
            ids[pair], seqs[pair] = row.id, row.seq
            renew.append(
                {
                    "s_id": row.id,
                    "s_secret": a.secret,
                    "s_lease": a.lease_seconds,
                    "s_now": a.now,
                    "s_expires": a.now + a.lease_seconds,
                }
            )
        else:
            seqs[pair] = 0
            create.append(
                {
                    "topic": a.topic,
                    "callback": a.callback,
                    "callback_host": host_of(a.callback),
                    "secret": a.secret,
                    "state": ACTIVE,
                    "lease_seconds": a.lease_seconds,
                    "verified_at": a.now,
                    "expires_at": a.now + a.lease_seconds,
                    "seq": 0,
                    "failed": 0,
                    "updated_at": a.now,
                }
            )
    if renew:
        await c.execute(_RENEW, renew)
    if create:
        for values, (sub_id,) in zip(create, await c.execute(_CREATE, create), strict=True):
            ids[(values["topic"], values["callback"])] = sub_id
    queued = dict.fromkeys(pairs, 0)
    if catch_up:
        since = min(cast(float, a.since) for a in catch_up)
        missed = (await c.execute(_SINCE, {"topics": sorted({a.topic for a in catch_up}), "since": since})).all()
        rows: list[dict[str, Any]] = []
        for a in catch_up:
            pair = (a.topic, a.callback)
            for payload_id, topic, created_at in missed:  # in id order, as they were published
                if topic == a.topic and created_at >= cast(float, a.since):
                    seqs[pair] += 1
                    queued[pair] += 1
                    rows.append(
                        {
                            "payload_id": payload_id,
                            "subscription_id": ids[pair],
                            "seq": seqs[pair],
                            "state": "pending",
                            "attempts": 0,
                            "next_attempt_at": a.now,
                            "created_at": a.now,
                        }
                    )
        if rows:
            await c.execute(insert(_deliveries), rows)
            await c.execute(_ADVANCE, [{"s_id": ids[p], "s_seq": seqs[p]} for p in pairs if queued[p]])
    return [(ids[p], queued[p]) for p in pairs]


async def deactivate(sessions: async_sessionmaker[AsyncSession], topic: str, callback: str, state: str) -> bool:
    """End a subscription (unsubscribed, gone): its pending deliveries are cancelled."""
    now = time.time()
    async with writing(sessions) as s:
        sub_id = (
            await s.execute(
                update(Subscription)
                .where(Subscription.topic == topic, Subscription.callback == callback, Subscription.state == ACTIVE)
                .values(state=state, updated_at=now)
                .returning(Subscription.id)
            )
        ).scalar_one_or_none()
        if sub_id is None:
            return False
        await _cancel_pending(s, [sub_id], now, state)
        return True


async def _cancel_pending(s: AsyncSession, sub_ids: Sequence[int], now: float, reason: str) -> None:
    await s.execute(
        update(Delivery)
        .where(Delivery.subscription_id.in_(sub_ids), Delivery.state == "pending")
        .values(state="cancelled", finished_at=now, last_error=f"subscription {reason}")
    )


async def find(sessions: async_sessionmaker[AsyncSession], topic: str, callback: str) -> Subscription | None:
    async with sessions() as s:
        return (
            await s.execute(select(Subscription).where(Subscription.topic == topic, Subscription.callback == callback))
        ).scalar_one_or_none()


def host_of(callback: str) -> str:
    """The host a callback URL names, as the per-host cap counts it: ASCII (IDNA) and lowercase."""
    return httpx.URL(callback).raw_host.decode("ascii").lower()[:255]


async def outlook(
    sessions: async_sessionmaker[AsyncSession], topic: str, callback: str | None = None
) -> tuple[int, bool]:
    """What a subscribe's checks need to know, in one read (one index lookup each): how many active
    subscriptions have their callback on ``callback``'s host, not counting ``callback`` itself (a
    renewal adds nothing; 0 without a callback), and whether ``topic`` has been fetched (so it has
    its baseline)."""
    async with _engine(sessions).connect() as c:
        if callback is not None:
            row = (await c.execute(_OUTLOOK, {"host": host_of(callback), "callback": callback, "topic": topic})).one()
        else:
            row = (await c.execute(_OUTLOOK_NO_COUNT, {"topic": topic})).one()
    return int(row[0]), row[1] is not None


def _engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine behind ``sessions``: a read of a few columns needs no ORM session."""
    return cast(AsyncEngine, sessions.kw["bind"])


async def expire_leases(sessions: async_sessionmaker[AsyncSession], now: float) -> int:
    async with writing(sessions) as s:
        result = await s.execute(
            update(Subscription)
            .where(Subscription.state == ACTIVE, Subscription.expires_at <= now)
            .values(state="expired", updated_at=now)
            .returning(Subscription.id)
        )
        return len(result.all())


# Topics ---------------------------------------------------------------------------------------


async def lock_topic(s: AsyncSession, url: str, now: float) -> None:
    """Create the topic row if missing and, on PostgreSQL, lock it for this transaction.

    A publish and a new subscription to the same topic take this lock first, so one of them always
    sees the other: either the publish finds the subscription active, or the activation finds the
    payload (READ COMMITTED would otherwise let each miss the other). SQLite has one writer."""
    await ensure_topic(s, url, now)
    if dialect(s) == "postgresql":
        await s.execute(select(Topic.id).where(Topic.url == url).with_for_update())


def _new_topic(s: AsyncSession, url: str, now: float, **values: object) -> Any:
    """The INSERT of a topic's row (a new topic is fetched soon, for a baseline), ``values`` over
    the defaults; the caller says what a conflict does."""
    return _insert(s, Topic).values(  # type: ignore[attr-defined]
        **{"url": url, "poll_interval": 0.0, "next_poll_at": now, "version": 0, **values}
    )


async def ensure_topic(s: AsyncSession, url: str, now: float, **values: object) -> None:
    """Create the topic row if missing."""
    await s.execute(_new_topic(s, url, now, **values).on_conflict_do_nothing(index_elements=["url"]))


async def bump_topic(s: AsyncSession, url: str, now: float, **values: object) -> None:
    """Create the topic if missing and count a new version of it, in one statement.

    On PostgreSQL the upsert's DO UPDATE locks the row until the transaction ends, as
    :func:`lock_topic` does; SQLite has one writer. ``values`` go into the row either way."""
    stmt = _new_topic(s, url, now, **{"version": 1, "updated_at": now, **values})
    await s.execute(
        stmt.on_conflict_do_update(
            index_elements=["url"], set_={"version": Topic.version + 1, "updated_at": now, **values}
        )
    )


async def record_pings(sessions: async_sessionmaker[AsyncSession], urls: Iterable[str]) -> None:
    """A publisher said these topics changed: recorded durably before the 204 (fetched later)."""
    now = time.time()
    async with writing(sessions) as s:
        for url in dict.fromkeys(urls):
            await ensure_topic(s, url, now)
        await s.execute(update(Topic).where(Topic.url.in_(list(dict.fromkeys(urls)))).values(ping_at=now))


# Payloads and deliveries ----------------------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    payload_id: int
    deliveries: int


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
    payload_id = (
        await s.execute(
            insert(Payload)
            .values(uid=secrets.token_hex(8), topic=topic, content_type=content_type, body=body, created_at=now)
            .returning(Payload.id)
        )
    ).scalar_one()
    # Every active subscriber takes its next sequence number, and the deliveries are made from the
    # numbers as stored, in SQL: no row goes through Python (10,000 subscribers: ~300 ms less before
    # the publisher's 2xx). This transaction holds the topic (bump_topic: no subscription of it can
    # become active meanwhile) and, on PostgreSQL, the rows the UPDATE changed, so the SELECT finds
    # exactly those rows and a concurrent publish can never hand out a number twice.
    active = and_(Subscription.topic == topic, Subscription.state == ACTIVE, Subscription.expires_at > now)
    advanced = cast(
        "CursorResult[Any]",
        await s.execute(
            update(Subscription)
            .where(active)
            .values(seq=Subscription.seq + 1)
            .execution_options(synchronize_session=False)
        ),
    ).rowcount
    fixed = [literal("pending"), literal(0), literal(now), literal(now)]
    due = select(literal(payload_id), Subscription.id, Subscription.seq, *fixed).where(active)
    if max_pending > 0:
        # Full subscriptions as a subquery, never as a list of ids: one bound parameter per id
        # would fail past 32,767 of them on PostgreSQL (asyncpg), and the statement would grow
        # with the number of dead callbacks.
        counted = aliased(Subscription)
        full = (
            select(Delivery.subscription_id)
            .join(counted, counted.id == Delivery.subscription_id)
            .where(counted.topic == topic, Delivery.state == "pending")
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
    return Enqueued(payload_id, queued)


@dataclass(frozen=True)
class Claimed:
    id: int
    payload_id: int
    subscription_id: int
    seq: int
    attempts: int
    created_at: float
    callback: str
    topic: str
    secret: str | None


async def claim(sessions: async_sessionmaker[AsyncSession], limit: int, claim_seconds: float) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries, only the oldest pending one of each subscription.

    ``claim_seconds`` should outlast a send; a claim that expires while its send is still going
    lets another process send the same delivery again (at-least-once, never lost)."""
    now = time.time()
    token = secrets.token_hex(8)
    earlier = aliased(Delivery)
    async with writing(sessions) as s:
        due = (
            select(Delivery.id)
            .where(
                Delivery.state == "pending",
                Delivery.next_attempt_at <= now,
                ~exists().where(
                    earlier.subscription_id == Delivery.subscription_id,
                    earlier.state == "pending",
                    earlier.seq < Delivery.seq,
                ),
            )
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(limit)
        )
        if dialect(s) == "postgresql":
            due = due.with_for_update(skip_locked=True)
        # One UPDATE picks and claims (the choice as a subquery, not a list of ids fetched first):
        # a round trip less before the first delivery of every publish.
        claimed = await s.execute(
            update(Delivery)
            .where(Delivery.id.in_(due.correlate(None).scalar_subquery()))
            # A claim pushes the row's next attempt out to the claim's end: rows in flight drop
            # out of the due index, and a dead process's claims fall due again by themselves.
            .values(claim_token=token, claimed_until=now + claim_seconds, next_attempt_at=now + claim_seconds)
            .execution_options(synchronize_session=False)
        )
        if not cast("CursorResult[Any]", claimed).rowcount:
            return []
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
    return [Claimed(*row) for row in rows]


async def payloads(sessions: async_sessionmaker[AsyncSession], ids: Iterable[int]) -> dict[int, Payload]:
    async with sessions() as s:
        return {p.id: p for p in (await s.execute(select(Payload).where(Payload.id.in_(list(ids))))).scalars()}


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. ``retry_at`` None: final (delivered, failed or gone)."""

    id: int
    subscription_id: int
    state: str  # delivered | retry | failed | gone
    status: int | None
    error: str | None
    retry_at: float | None = None


_FINAL_STATE = {"failed": "failed", "gone": "cancelled"}


async def record(sessions: async_sessionmaker[AsyncSession], outcomes: Sequence[Outcome]) -> None:
    """Write a batch of attempt outcomes in one transaction."""
    now = time.time()
    delivered: dict[int | None, list[int]] = {}  # by status: one UPDATE ... IN for each (few)
    for o in outcomes:
        if o.state == "delivered":
            delivered.setdefault(o.status, []).append(o.id)
    async with writing(sessions) as s:
        for status, ids in delivered.items():
            await s.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids))
                .values(
                    state="delivered",
                    attempts=Delivery.attempts + 1,
                    finished_at=now,
                    last_status=status,
                    claim_token=None,
                    claimed_until=None,
                )
            )
        others = [o for o in outcomes if o.state != "delivered"]
        if others:
            t = cast(Table, Delivery.__table__)
            await s.execute(
                update(t)
                .where(t.c.id == bindparam("d_id"))
                .values(
                    state=bindparam("d_state"),
                    attempts=t.c.attempts + 1,
                    next_attempt_at=bindparam("d_next"),
                    finished_at=bindparam("d_finished"),
                    last_status=bindparam("d_status"),
                    last_error=bindparam("d_error"),
                    claim_token=None,
                    claimed_until=None,
                ),
                [
                    {
                        "d_id": o.id,
                        "d_state": _FINAL_STATE.get(o.state, "pending"),
                        "d_next": o.retry_at if o.retry_at is not None else now,
                        "d_finished": None if o.state == "retry" else now,
                        "d_status": o.status,
                        "d_error": (o.error or "")[:1000] or None,
                    }
                    for o in others
                ],
            )
        failed = [o for o in others if o.state == "failed"]
        for o in failed:
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
        gone = sorted({o.subscription_id for o in others if o.state == "gone"})
        if gone:
            await s.execute(update(Subscription).where(Subscription.id.in_(gone)).values(state="gone", updated_at=now))
            await _cancel_pending(s, gone, now, "gone")


async def release(sessions: async_sessionmaker[AsyncSession], ids: Sequence[int]) -> None:
    """Give back claims this process will not send (shutting down)."""
    if not ids:
        return
    async with writing(sessions) as s:
        await s.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(ids)), Delivery.state == "pending")
            .values(claim_token=None, claimed_until=None, next_attempt_at=time.time())
        )


async def defer(sessions: async_sessionmaker[AsyncSession], ids: Sequence[int], until: float) -> None:
    """Give back claims for a moment (their host is saturated here); no attempt is counted."""
    async with writing(sessions) as s:
        await s.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(ids)), Delivery.state == "pending")
            .values(claim_token=None, claimed_until=None, next_attempt_at=until)
        )


async def hurry(sessions: async_sessionmaker[AsyncSession], callback_prefixes: Collection[str]) -> int:
    """Make pending deliveries to callbacks under any of ``callback_prefixes`` due now (relay.online).

    One transaction for all of them: a mass registration brings thousands of names online within
    seconds, and a transaction each would compete with the registrations' own writes."""
    if not callback_prefixes:
        return 0
    now = time.time()
    escaped = [p.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for p in sorted(callback_prefixes)]
    hurried = 0
    async with writing(sessions) as s:
        for i in range(0, len(escaped), HURRY_CHUNK):
            matches = [Subscription.callback.like(e + "%", escape="\\") for e in escaped[i : i + HURRY_CHUNK]]
            result = await s.execute(
                update(Delivery)
                .where(
                    Delivery.state == "pending",
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
            .where(Delivery.subscription_id == sub_id, Delivery.seq > since, Delivery.state != "pending")
            .values(state="pending", next_attempt_at=now, finished_at=None, claim_token=None, claimed_until=None)
            .returning(Delivery.id)
        )
        return len(result.all())


async def oldest_retained(sessions: async_sessionmaker[AsyncSession], sub_id: int) -> int | None:
    async with sessions() as s:
        return (
            await s.execute(select(func.min(Delivery.seq)).where(Delivery.subscription_id == sub_id))
        ).scalar_one_or_none()


async def pending_count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        return int((await s.execute(select(func.count()).where(Delivery.state == "pending"))).scalar_one())


async def prune(sessions: async_sessionmaker[AsyncSession], older_than: float) -> None:
    """Drop finished deliveries and unreferenced payloads past the retention horizon."""
    async with writing(sessions) as s:
        await s.execute(delete(Delivery).where(Delivery.state != "pending", Delivery.finished_at < older_than))
        await s.execute(
            delete(Payload).where(Payload.created_at < older_than, ~exists().where(Delivery.payload_id == Payload.id))
        )


# Feed entries ---------------------------------------------------------------------------------


async def known_entries(s: AsyncSession, topic_id: int) -> dict[str, str]:
    rows = await s.execute(select(Entry.key_hash, Entry.content_hash).where(Entry.topic_id == topic_id))
    return {k: v for k, v in rows.all()}


async def remember_entries(s: AsyncSession, topic_id: int, entries: dict[str, str], known: dict[str, str]) -> None:
    new = [{"topic_id": topic_id, "key_hash": k, "content_hash": v} for k, v in entries.items() if k not in known]
    changed = [{"e_key": k, "e_hash": v} for k, v in entries.items() if k in known and known[k] != v]
    if new:
        await s.execute(insert(Entry), new)
    if changed:
        t = cast(Table, Entry.__table__)
        await s.execute(
            update(t)
            .where(and_(t.c.topic_id == literal(topic_id), t.c.key_hash == bindparam("e_key")))
            .values(content_hash=bindparam("e_hash")),
            changed,
        )
