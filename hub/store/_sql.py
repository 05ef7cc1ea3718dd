"""What every store module shares: the write transaction, the dialect, the tables as Core objects."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import anyio
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hub.models import Delivery, Entry, Payload, Subscription, Topic

subscriptions_table = cast(Table, Subscription.__table__)
payloads_table = cast(Table, Payload.__table__)
deliveries_table = cast(Table, Delivery.__table__)
topics_table = cast(Table, Topic.__table__)
entries_table = cast(Table, Entry.__table__)


def dialect(s: AsyncSession) -> str:
    """The name of the database dialect ``s`` talks to: ``sqlite`` or ``postgresql``."""
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


def dialect_insert(session: AsyncSession, table: type) -> object:
    """The dialect's INSERT (with ON CONFLICT). Imported here: the engine has loaded its own dialect
    already, and the other one's modules (large, for PostgreSQL) stay out of the process."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine behind ``sessions``: a read of a few columns needs no ORM session."""
    return cast(AsyncEngine, sessions.kw["bind"])
