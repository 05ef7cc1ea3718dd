"""sqlite3 on a thread of its own, for SQLAlchemy's ``sqlite+aiosqlite`` dialect.

The dialect drives an aiosqlite-shaped connection: awaitable to open, ``cursor()``, ``commit()``,
``rollback()``, ``close()``, a forced ``stop()``, and, for its isolation-level setter, the queue of
calls (``_tx``), the sqlite3 connection (``_conn``) and whether one is open (``_connection``).
:func:`connect` gives one (``create_async_engine(..., async_creator_fn=connect)`` through
``reversehub.core.db``) that differs from aiosqlite's where a server must not hang or crash:

- ``stop()`` is idempotent, and ``close()`` after a stop returns at once. When a query is cancelled
  half-way, SQLAlchemy terminates the connection with a graceful ``close()`` in a shielded task and
  a forced ``stop()`` beside it; a second stop queued behind the first would wait on a thread that
  has ended, a task that ignores one cancellation, and the event loop's shutdown would wait for ever.
- A result for an event loop that has closed meanwhile is dropped (nobody can await it) instead of
  killing the thread with "Event loop is closed"; the thread still closes sqlite3 and ends.

Each call is one future and one queue item: the thread runs calls in order, one at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from queue import SimpleQueue
from typing import Any

_STOP = object()

_Call = tuple["asyncio.Future[Any] | None", Callable[[], Any]]


def _settle(future: asyncio.Future[Any], ok: bool, result: Any) -> None:
    if not future.done():  # a cancelled caller has gone
        if ok:
            future.set_result(result)
        else:
            future.set_exception(result)


def _work(tx: SimpleQueue[_Call]) -> None:
    """Run queued calls in order until the stop sentinel; hand each result to its future's loop."""
    while True:
        future, function = tx.get()
        try:
            result, ok = function(), True
        except BaseException as exc:  # noqa: B036  (handed to the awaiting coroutine)
            result, ok = exc, False
        if future is not None:
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, ok, result)
            except RuntimeError:
                pass  # the event loop is closed: nobody is waiting any more
        if result is _STOP:
            return


class Connection:
    """One sqlite3 connection, every call of it run on :attr:`thread`."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        self._connector = connector
        self._connection: sqlite3.Connection | None = None
        self._tx: SimpleQueue[_Call] = SimpleQueue()
        self._running = True
        self.thread = threading.Thread(target=_work, args=(self._tx,), name="sqlite", daemon=True)

    def __await__(self) -> Any:
        self.thread.start()
        return self._open().__await__()

    async def _open(self) -> Connection:
        try:
            self._connection = await self._run(self._connector)
        except BaseException:
            self.stop()
            raise
        return self

    def __del__(self) -> None:
        if self._running:
            self._queue_stop(None)  # the thread ends and closes sqlite3; nothing to await here

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")
        return self._connection

    async def _run(self, function: Callable[[], Any]) -> Any:
        if not self._running:
            raise ValueError("Connection closed")
        future = asyncio.get_running_loop().create_future()
        self._tx.put_nowait((future, function))
        return await future

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return await self._run(partial(function, *args) if args else function)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> Cursor:
        """A cursor, opened on the thread by ``async with`` / ``__aenter__`` (as aiosqlite's)."""
        return Cursor(self)

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        cursor = await self.cursor().__aenter__()
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        await self._call(self._conn.commit)

    async def rollback(self) -> None:
        await self._call(self._conn.rollback)

    async def create_function(self, name: str, num_params: int, func: Any, deterministic: bool = False) -> None:
        await self._call(partial(self._conn.create_function, name, num_params, func, deterministic=deterministic))

    async def close(self) -> None:
        """Close sqlite3 and end the thread; at once when :meth:`stop` came first (it closes both)."""
        if self._connection is None or not self._running:
            return
        try:
            await self._call(self._conn.close)
        finally:
            self._connection = None
            future = self.stop()
            if future is not None:
                await future

    def stop(self) -> asyncio.Future[Any] | None:
        """End the thread once the calls queued so far have run, closing sqlite3 first. Idempotent:
        a second stop returns None (one sentinel, one thread exit)."""
        if not self._running:
            return None
        try:
            future: asyncio.Future[Any] | None = asyncio.get_running_loop().create_future()
        except RuntimeError:
            future = None  # no loop here (garbage collection): nothing will await it
        self._queue_stop(future)
        return future

    def _queue_stop(self, future: asyncio.Future[Any] | None) -> None:
        self._running = False

        def close_and_stop() -> object:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            return _STOP

        self._tx.put_nowait((future, close_and_stop))


class Cursor:
    """A sqlite3 cursor whose calls run on its connection's thread."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._cursor: sqlite3.Cursor | None = None

    async def __aenter__(self) -> Cursor:
        self._cursor = await self._connection._call(self._connection._conn.cursor)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _c(self) -> sqlite3.Cursor:
        if self._cursor is None:
            raise ValueError("cursor not opened")
        return self._cursor

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None) -> Cursor:
        await self._connection._call(self._c.execute, sql, () if parameters is None else parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any] | dict[str, Any]]) -> Cursor:
        await self._connection._call(self._c.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return await self._connection._call(self._c.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return await self._connection._call(self._c.fetchmany, self._c.arraysize if size is None else size)  # type: ignore[no-any-return]

    async def fetchall(self) -> list[Any]:
        return await self._connection._call(self._c.fetchall)  # type: ignore[no-any-return]

    async def __aiter__(self) -> AsyncIterator[Any]:
        while rows := await self.fetchmany():
            for row in rows:
                yield row

    async def close(self) -> None:
        if self._cursor is not None and self._connection._connection is not None:
            await self._connection._call(self._cursor.close)

    @property
    def description(self) -> Any:
        return self._c.description

    @property
    def rowcount(self) -> int:
        return self._c.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._c.lastrowid

    @property
    def arraysize(self) -> int:
        return self._c.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._c.arraysize = value


def connect(database: str, **kwargs: Any) -> Connection:
    """A connection to ``database`` (``sqlite3.connect`` arguments), opened when awaited."""
    return Connection(partial(sqlite3.connect, database, **kwargs))
