"""Topic rows (fetch state, versions, publish pings) and the feed entries already distributed.

A topic's row is also the lock a publish and a new subscription of that topic both take
(:func:`lock_topic`, :func:`bump_topic`), so each always sees the other.

A row exists for a topic someone subscribes to (or is being verified for): a ping of any other
topic writes nothing (:func:`record_pings`), and a topic nobody subscribes to any more is deleted
once idle (:func:`prune_topics`). Pings are unauthenticated: were every pinged URL a row, anyone
could grow the table by gigabytes an hour.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.models import Entry, Subscription, SubscriptionState, SupSource, Topic
from hub.store._sql import dialect, dialect_insert, writing


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
    return dialect_insert(s, Topic).values(  # type: ignore[attr-defined]
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


async def record_pings(sessions: async_sessionmaker[AsyncSession], urls: Iterable[str]) -> int:
    """A publisher said these topics changed: recorded durably before the 204 (fetched later).
    Returns how many topics were recorded.

    Only topics that have a row: a topic nobody subscribes to has nobody to deliver to, and its
    first subscriber's verification fetches it anyway (a baseline), so its ping creates nothing."""
    now = time.time()
    async with writing(sessions) as s:
        result = await s.execute(
            update(Topic).where(Topic.url.in_(list(dict.fromkeys(urls)))).values(ping_at=now, pinged_at=now)
        )
    return cast("CursorResult[Any]", result).rowcount


# Topics deleted per pass of prune_topics: one transaction stays short however many are idle.
PRUNE_BATCH = 1000


async def prune_topics(sessions: async_sessionmaker[AsyncSession], idle_since: float) -> int:
    """Delete topics without an active subscription that nothing happened to since ``idle_since``
    (no fetch, publish or poll), with their remembered entries; returns how many.

    The idle time spares a topic whose first subscription is being verified (its baseline fetch
    just touched it). A topic subscribed again later starts from a fresh baseline."""
    idle = (
        select(Topic.id)
        .where(
            ~exists().where(Subscription.topic == Topic.url, Subscription.state == SubscriptionState.ACTIVE),
            func.coalesce(Topic.fetched_at, 0.0) < idle_since,
            func.coalesce(Topic.updated_at, 0.0) < idle_since,
            func.coalesce(Topic.next_poll_at, 0.0) < idle_since,
            func.coalesce(Topic.fetch_claimed_until, 0.0) < idle_since,
        )
        .limit(PRUNE_BATCH)
    )
    async with writing(sessions) as s:
        ids = list((await s.execute(idle)).scalars())
        if ids:
            # Entries first: SQLite enforces no ON DELETE CASCADE unless foreign keys are switched on.
            await s.execute(delete(Entry).where(Entry.topic_id.in_(ids)))
            await s.execute(delete(Topic).where(Topic.id.in_(ids)))
    return len(ids)


async def known_entries(s: AsyncSession, topic_id: int) -> dict[str, str]:
    """The entries of the topic already distributed: key hash -> content hash."""
    rows = await s.execute(select(Entry.key_hash, Entry.content_hash).where(Entry.topic_id == topic_id))
    return {k: v for k, v in rows.all()}


async def ensure_sup_source(s: AsyncSession, url: str, period: float, now: float) -> None:
    """Poll the SUP document at ``url`` from ``now`` on, unless it is polled already. Two processes
    may find it in two feeds at once: the second insert is a no-op, not an error in its fetch."""
    stmt = dialect_insert(s, SupSource).values(url=url, period=period, next_poll_at=now)  # type: ignore[attr-defined]
    await s.execute(stmt.on_conflict_do_nothing(index_elements=["url"]))


async def topic_id(s: AsyncSession, url: str) -> int | None:
    return (await s.execute(select(Topic.id).where(Topic.url == url))).scalar_one_or_none()


async def remember_entries(
    s: AsyncSession, topic_id: int, entries: Mapping[str, str], known: Mapping[str, str] | None = None
) -> None:
    """Record ``entries`` (key hash -> content hash) as distributed; ``known`` (what was read
    before, if anything) spares the writes of entries that did not change.

    An upsert: a fat ping and a fetch of one topic may record the same entry at once (in two
    processes, or one of them between the other's read and write), and neither may fail for it."""
    rows = [
        {"topic_id": topic_id, "key_hash": k, "content_hash": v}
        for k, v in entries.items()
        if known is None or known.get(k) != v
    ]
    if not rows:
        return
    stmt = dialect_insert(s, Entry)
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["topic_id", "key_hash"],
        set_={"content_hash": stmt.excluded.content_hash},  # type: ignore[attr-defined]
    )
    await s.execute(stmt, rows)
