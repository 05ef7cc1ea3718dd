"""The SQLAlchemy side: plain URL -> async engine, sessions, the declarative base, migrations.

Operators give plain SQLAlchemy URLs (``sqlite:///path``, ``postgresql://...``); the async driver is
picked here so nobody has to know about ``+aiosqlite`` or ``+asyncpg``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

import migrations
from reversehub.core import extras, sqlite

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_POOL_SIZE = 10

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatabaseURLError(ValueError):
    """The database URL names no backend we can drive."""


class MigrationError(RuntimeError):
    """The schema could not be brought to head."""


# SQLSTATE classes (PostgreSQL appendix A) that say the database cannot take the work now, not that
# the work is wrong: 08 connection, 25 read-only transaction, 40 serialization/deadlock, 53 disk full
# or out of memory, 57 operator intervention (shutdown), 58 I/O error. asyncpg's read-only and
# disk-full errors reach SQLAlchemy as plain DBAPIErrors, so the class is what tells them apart.
_UNAVAILABLE_SQLSTATES = ("08", "25", "40", "53", "57", "58")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot serve right now (full, read-only, down, locked,
    pool exhausted): worth a 503 with ``Retry-After`` and a retry, unlike an error in the statement.

    SQLite reports a full disk, a read-only file and a lock as ``OperationalError``."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATES
    return False


def async_url(url: str | URL) -> URL:
    """``sqlite:///x.db`` -> ``sqlite+aiosqlite:///x.db``; ``postgresql://`` -> ``postgresql+asyncpg://``."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise DatabaseURLError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    if parsed.drivername in (backend, "postgres"):
        parsed = parsed.set(drivername=ASYNC_DRIVERS[backend])
    if parsed.drivername == ASYNC_DRIVERS["postgresql"]:
        extras.require("asyncpg", "a postgresql:// database URL")
    return parsed


def is_sqlite(engine_or_url: AsyncEngine | str | URL) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, AsyncEngine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def create_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine for a plain URL. SQLite gets WAL, a busy timeout and enforced foreign keys."""
    aurl = async_url(url)
    # SQLAlchemy's text of an error quotes the statement's parameters (a subscription's hub.secret,
    # a token digest), and worker loops log errors with their traceback: leave parameters out.
    kwargs.setdefault("hide_parameters", True)
    if aurl.get_backend_name() == "sqlite":
        database = aurl.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30})
        if database and database != ":memory:":
            # A fixed set of connections, none made and dropped under load: each new one is a
            # thread, a file open and the schema parsed again, and at 64 verifications in flight
            # the default pool (5 + 10 overflow) made and dropped thousands. SQLite has one writer
            # (the hub's writers queue in-process, hub.store.writing); readers wait for a free one.
            kwargs.setdefault("pool_size", SQLITE_POOL_SIZE)
            kwargs.setdefault("max_overflow", 0)
            kwargs.setdefault("pool_timeout", 120)
        engine = create_async_engine(aurl, **kwargs)

        # SQLAlchemy's aiosqlite dialect, over our own thread-backed connection (reversehub.core.sqlite):
        # its close cannot hang the event loop's shutdown. SQLAlchemy's connect arguments are kept.
        @event.listens_for(engine.sync_engine, "do_connect")
        def _connect(dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
            return dialect.loaded_dbapi.connect(*cargs, async_creator_fn=sqlite.connect, **cparams)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(aurl, **kwargs)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _pg_connect(dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        return _connect_translated(dialect, cargs, cparams)

    return engine


def _connect_translated(dialect: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    """Connect, with a server that is away reported as the driver's ``OperationalError``.

    asyncpg raises a plain ``ConnectionRefusedError`` (or a ``TimeoutError``, or "the database
    system is starting up") when the server is down or restarting, and SQLAlchemy passes those on
    unwrapped: every caller would see a bare OSError and answer 500. As an ``OperationalError``
    it is what :func:`unavailable` and the app's 503 mapping know."""
    dbapi = dialect.loaded_dbapi
    try:
        return dialect.connect(*cargs, **cparams)
    except dbapi.Error:
        raise
    except Exception as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        if isinstance(exc, OSError) or (isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATES):
            raise dbapi.OperationalError(f"cannot connect to the database: {type(exc).__name__}: {exc}") from exc
        raise


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | URL | None = None) -> Any:
    """An Alembic Config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", async_url(url).render_as_string(hide_password=False))
    return cfg


def _upgrade(connection: Connection) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None when it has no schema yet (one SELECT, no Alembic)."""
    async with engine.connect() as conn:
        try:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        except DBAPIError:
            return None  # no alembic_version table: a new database


def in_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to Alembic head (idempotent).

    At head (every start but the first after an upgrade) this is one SELECT. Otherwise Alembic runs
    in a child process (``reversehub db upgrade``), so that its modules never stay in a long-running
    server (they are of no use once the schema is at head); only an in-memory SQLite database, which a
    child cannot see, migrates here.
    """
    if await schema_revision(engine) == migrations.HEAD:
        return
    if in_memory(engine.url):
        await upgrade_here(engine)
        return
    url = engine.url.set(drivername=engine.url.get_backend_name())
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reversehub",
        "db",
        "upgrade",
        # The URL may hold a password: it goes in the environment, never on a command line.
        env={**os.environ, "REVERSEHUB_DATABASE_URL": url.render_as_string(hide_password=False)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await child.communicate()
    if child.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-1:]
        raise MigrationError(f"reversehub db upgrade failed ({child.returncode}): {' '.join(tail)}")


async def upgrade_here(engine: AsyncEngine) -> None:
    """Run Alembic's upgrade to head in this process (``reversehub db upgrade`` does)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
