"""Subscription rows: a verified (topic, callback) pair is stored, renewed, ended and expired here.

A subscription exists once its intent was verified (W3C WebSub 5.3); re-subscribing renews the
row, never duplicates it (5.1: a subscribe for a pair that exists is a renewal).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx
from sqlalchemy import bindparam, exists, func, insert, literal, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from hub.models import DeliveryState, Subscription, SubscriptionState
from hub.store._sql import deliveries_table, engine_of, payloads_table, subscriptions_table, topics_table, writing
from hub.store.deliveries import cancel_pending
from hub.store.topics import lock_topic
from reversehub.core.egress import normalize_host

ACTIVE = SubscriptionState.ACTIVE
_subs, _payloads, _deliveries, _topics = subscriptions_table, payloads_table, deliveries_table, topics_table
ACTIVATE_CHUNK = 200  # (topic, callback) pairs per statement: 400 bound parameters

# Built once: a statement object keeps its compiled form's cache key, so executing it again
# costs no expression building, which a fresh ORM select on every call would.
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
_CLIENT_HOST_COUNT = select(func.count()).where(
    _subs.c.state == ACTIVE,
    _subs.c.callback_host == bindparam("host"),
    _subs.c.client == bindparam("client"),
    _subs.c.callback != bindparam("callback"),
)
_FETCHED = select(_topics.c.fetched_at).where(_topics.c.url == bindparam("topic")).scalar_subquery()
# A topic nobody listens to is not fetched: what the hub remembers of it may be old.
_LISTENED = exists().where(_subs.c.topic == bindparam("topic"), _subs.c.state == ACTIVE)
_OUTLOOK = select(_HOST_COUNT, _FETCHED, _LISTENED)
_OUTLOOK_NO_COUNT = select(literal(0), _FETCHED, _LISTENED)


@dataclass(frozen=True)
class Activation:
    """A verified subscribe: ``now`` is when it was verified, ``since`` when its verification went out."""

    topic: str
    callback: str
    secret: str | None
    lease_seconds: int
    now: float
    since: float | None = None
    # What the per-host cap counts it under, when not its host (:func:`host_of`).
    callback_host: str | None = None
    # Who asked for it, for the per-client share of that cap (None: nobody's share).
    client: str | None = None


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
                    "callback_host": a.callback_host or host_of(a.callback),
                    "client": a.client,
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
                            "state": DeliveryState.PENDING,
                            "attempts": 0,
                            "next_attempt_at": a.now,
                            "created_at": a.now,
                        }
                    )
        if rows:
            await c.execute(insert(_deliveries), rows)
            await c.execute(_ADVANCE, [{"s_id": ids[p], "s_seq": seqs[p]} for p in pairs if queued[p]])
    return [(ids[p], queued[p]) for p in pairs]


async def deactivate(
    sessions: async_sessionmaker[AsyncSession], topic: str, callback: str, state: SubscriptionState
) -> bool:
    """End a subscription: ``state`` is what it ends as (a :class:`SubscriptionState`, unsubscribed
    or gone), and its pending deliveries are cancelled. False if the pair had no active one."""
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
        await cancel_pending(s, [sub_id], now, state)
        return True


async def find(sessions: async_sessionmaker[AsyncSession], topic: str, callback: str) -> Subscription | None:
    """The row of the (topic, callback) pair, whatever its state; None if there never was one."""
    async with sessions() as s:
        return (
            await s.execute(select(Subscription).where(Subscription.topic == topic, Subscription.callback == callback))
        ).scalar_one_or_none()


def host_of(callback: str) -> str:
    """The host a callback URL names, as the per-host cap counts it: ASCII (IDNA), in one spelling
    (``localhost``, ``127.1`` and ``0x7f000001`` are one host, not three budgets)."""
    return normalize_host(httpx.URL(callback).raw_host.decode("ascii"))[:255]


async def outlook(
    sessions: async_sessionmaker[AsyncSession], topic: str, callback: str | None = None, host: str | None = None
) -> tuple[int, bool]:
    """What a subscribe's checks need to know, in one read (one index lookup each): how many active
    subscriptions have their callback on ``callback``'s host (or are counted under ``host``), not
    counting ``callback`` itself (a renewal adds nothing; 0 without a callback), and whether
    ``topic`` has a current baseline: it was fetched and someone listens to it, so the fetcher
    keeps what the hub remembers of it current."""
    async with engine_of(sessions).connect() as c:
        if callback is not None:
            params = {"host": host or host_of(callback), "callback": callback, "topic": topic}
            row = (await c.execute(_OUTLOOK, params)).one()
        else:
            row = (await c.execute(_OUTLOOK_NO_COUNT, {"topic": topic})).one()
    return int(row[0]), row[1] is not None and bool(row[2])


async def client_share(
    sessions: async_sessionmaker[AsyncSession], callback: str, client: str, host: str | None = None
) -> int:
    """How many active subscriptions ``client`` asked for with their callback on ``callback``'s host
    (or counted under ``host``), not counting ``callback`` itself: one index lookup."""
    params = {"host": host or host_of(callback), "client": client, "callback": callback}
    async with engine_of(sessions).connect() as c:
        return int((await c.execute(_CLIENT_HOST_COUNT, params)).scalar_one())


async def expire_leases(sessions: async_sessionmaker[AsyncSession], now: float) -> int:
    """End the active subscriptions whose lease ran out by ``now``; returns how many."""
    async with writing(sessions) as s:
        result = await s.execute(
            update(Subscription)
            .where(Subscription.state == ACTIVE, Subscription.expires_at <= now)
            .values(state=SubscriptionState.EXPIRED, updated_at=now)
            .returning(Subscription.id)
        )
        return len(result.all())
