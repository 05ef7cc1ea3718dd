"""The SQLite connection under cancellation: shutting down an event loop must never hang on it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import anyio
import pytest
from sqlalchemy import event, text

from reversehub.core import db, sqlite

pytestmark = pytest.mark.anyio

SLOW = "with recursive n(i) as (select 1 union all select i + 1 from n where i < 3000000) select count(*) from n"


async def test_a_graceful_close_racing_a_forced_stop_ends_on_one_cancellation(tmp_path: Path) -> None:
    """What SQLAlchemy's terminate() does when a query is cancelled half-way: close() in a task,
    stop() beside it; then the loop's shutdown cancels that task once (asyncio.runners)."""
    driver = await sqlite.connect(str(tmp_path / "x.db"))
    closing = asyncio.ensure_future(driver.close())
    await asyncio.sleep(0)  # close() has queued sqlite3's close on the worker thread
    driver.stop()
    closing.cancel()
    with anyio.fail_after(5):
        await asyncio.wait([closing])
    driver.thread.join(5)
    assert not driver.thread.is_alive()


def test_a_worker_finishing_after_its_loop_closed_exits_quietly(tmp_path: Path) -> None:
    """A query still running when its event loop closes: the worker thread drops the result and still
    stops (plain aiosqlite dies with "Event loop is closed", a thread exception pytest reports)."""
    seen: list[threading.ExceptHookArgs] = []
    previous, threading.excepthook = threading.excepthook, seen.append
    try:
        holder: list[sqlite.Connection] = []

        async def leave_a_query_running() -> None:
            driver = await sqlite.connect(str(tmp_path / "x.db"))
            holder.append(driver)
            asyncio.ensure_future(driver.execute(SLOW))
            await asyncio.sleep(0.01)
            driver.stop()  # queued behind the query, its future on a loop about to close

        asyncio.run(leave_a_query_running())
        holder[0].thread.join(30)
        assert not holder[0].thread.is_alive()
        assert seen == []
    finally:
        threading.excepthook = previous


async def test_engines_use_it_with_their_settings(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection, sqlite.Connection)
            assert (await conn.execute(text("pragma busy_timeout"))).scalar() == 30000
            assert (await conn.execute(text("pragma foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_a_busy_sqlite_engine_keeps_its_connections(tmp_path: Path) -> None:
    """Waves of more concurrent readers than the pool holds open no connection beyond the pool's
    (each would be a new thread and a new file handle, made and dropped under load)."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    opened = []
    event.listen(engine.sync_engine, "connect", lambda conn, _record: opened.append(conn))
    try:

        async def read() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
                await anyio.sleep(0.01)

        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for _ in range(2 * db.SQLITE_POOL_SIZE):
                    tg.start_soon(read)
        assert 1 < len(opened) <= db.SQLITE_POOL_SIZE
    finally:
        await engine.dispose()


async def test_an_error_does_not_quote_the_statements_parameters(tmp_path: Path) -> None:
    """Worker loops log database errors with their text: a secret bound to a statement must not be in it."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as caught:
                await conn.execute(text("insert into nowhere values (:secret)"), {"secret": "hub-secret-3f9a"})
        assert "hub-secret-3f9a" not in str(caught.value)
    finally:
        await engine.dispose()
