"""Throwaway PostgreSQL databases for tests, so that runs (and engineers) never share state.

Each is created through the ``postgres`` maintenance database of the server in ``postgres_url``,
optionally as a copy of a migrated template (``CREATE DATABASE … TEMPLATE``, a file copy: much faster
than migrating again), and dropped afterwards with ``FORCE`` so a leftover connection cannot block it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from reversehub import db


def database_url(server_url: str, name: str) -> str:
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def _admin(server_url: str, statement: str) -> None:
    engine = create_async_engine(db.async_url(database_url(server_url, "postgres")), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


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
