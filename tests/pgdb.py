"""Throwaway PostgreSQL databases for tests, so that runs (and engineers) never share state.

Each is created through the ``postgres`` maintenance database of the server in ``postgres_url``,
optionally as a copy of a migrated template (``CREATE DATABASE … TEMPLATE``, a file copy: much faster
than migrating again), and dropped afterwards with ``FORCE`` so a leftover connection cannot block it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from reversehub.core import db


def database_url(server_url: str, name: str) -> str:
    """``name`` on the server of ``server_url``. Loopback tests skip asyncpg's TLS probe (sslmode
    "prefer"): a probe cut short leaves a future whose error nobody retrieves, which fails an unrelated test."""
    url = make_url(server_url).set(database=name)
    if "ssl" not in url.query and "sslmode" not in url.query:
        url = url.update_query_dict({"ssl": "disable"})
    return url.render_as_string(hide_password=False)


@asynccontextmanager
async def _maintenance(server_url: str) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection to the server's ``postgres`` database (CREATE/DROP DATABASE need one)."""
    engine = create_async_engine(db.async_url(database_url(server_url, "postgres")), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


async def _admin(server_url: str, statement: str) -> None:
    async with _maintenance(server_url) as conn:
        await conn.execute(text(statement))


async def create_database(server_url: str, *, template: str | None = None, migrate: bool = False) -> str:
    """Create a uniquely named database (a copy of ``template`` if given); returns its URL."""
    name = f"reversehub_test_{uuid.uuid4().hex[:16]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    url = database_url(server_url, name)
    if migrate:
        engine = db.create_engine(url)
        try:
            await db.migrate(engine)
        finally:
            await engine.dispose()
    return url


async def drop_database(url: str) -> None:
    name = make_url(url).database
    await _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def scratch_database(
    server_url: str, *, template: str | None = None, migrate: bool = False
) -> AsyncIterator[str]:
    url = await create_database(server_url, template=template, migrate=migrate)
    try:
        yield url
    finally:
        await drop_database(url)


def server_url() -> str:
    """The PostgreSQL server for tests (REVERSEHUB_TEST_POSTGRES_URL); skips locally, fails in CI when down."""
    from tests.support import POSTGRES_DEFAULT, require_service

    url = os.environ.get("REVERSEHUB_TEST_POSTGRES_URL", POSTGRES_DEFAULT)
    parsed = make_url(url)
    require_service("PostgreSQL", parsed.host or "127.0.0.1", parsed.port or 5432)
    return url


_templates: dict[str, str] = {}


def per_test_database() -> Iterator[str]:
    """A fresh copy of a template migrated once per session (``REVERSEHUB_TEST_DATABASE=postgresql``)."""
    server = server_url()
    if server not in _templates:
        template = _templates[server] = asyncio.run(create_database(server, migrate=True))
        atexit.register(lambda: asyncio.run(drop_database(template)))
    url = asyncio.run(create_database(server, template=make_url(_templates[server]).database))
    try:
        yield url
    finally:
        if not asyncio.run(drop_if_idle(url)):
            # A connection of the test's app is still open (a task that outlived its app): forcing
            # the drop now would break it under the next test's event loop; drop it at exit instead.
            atexit.register(lambda: asyncio.run(drop_database(url)))


async def drop_if_idle(url: str) -> bool:
    """Drop the database unless someone is still connected to it; True if dropped."""
    name = make_url(url).database
    async with _maintenance(url) as conn:
        busy = await conn.execute(text("select count(*) from pg_stat_activity where datname = :n"), {"n": name})
        if busy.scalar():
            return False
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        return True
