"""Alembic head matches the models, on SQLite (and on PostgreSQL in tests/test_postgres.py)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from reversehub.core import db

pytestmark = pytest.mark.anyio


async def test_head_matches_models(tmp_path):
    import hub.models  # noqa: F401
    import relay.models  # noqa: F401

    engine = db.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    await db.migrate(engine)
    await db.migrate(engine)  # idempotent

    def diff(conn):
        return compare_metadata(MigrationContext.configure(conn), db.Base.metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    await engine.dispose()


def test_plain_urls_get_async_drivers():
    assert db.async_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert db.async_url("postgresql://u@h/d").drivername == "postgresql+asyncpg"
    assert db.async_url("postgresql+asyncpg://u@h/d").drivername == "postgresql+asyncpg"
    with pytest.raises(db.DatabaseURLError):
        db.async_url("mysql://u@h/d")


def test_head_constant_is_alembics_head():
    from alembic.script import ScriptDirectory

    import migrations

    assert migrations.HEAD == ScriptDirectory.from_config(db.alembic_config()).get_current_head()


def test_a_server_process_never_imports_alembic(tmp_path):
    """A new database is migrated by a child process; a current one costs one SELECT."""
    probe = textwrap.dedent(
        """
        import asyncio, sys
        from reversehub.core import db

        async def main(url):
            engine = db.create_engine(url)
            try:
                before = await db.schema_revision(engine)
                await db.migrate(engine)
                after = await db.schema_revision(engine)
                await db.migrate(engine)
            finally:
                await engine.dispose()
            print(before, after, "alembic" in sys.modules)

        asyncio.run(main(sys.argv[1]))
        """
    )
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import migrations

    assert out.stdout.split() == ["None", migrations.HEAD, "False"]


async def test_an_unreachable_database_fails_without_showing_its_password():
    engine = db.create_engine("postgresql://reversehub:s3cret-pw@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(Exception) as failure:
            await db.migrate(engine)
        assert "s3cret-pw" not in str(failure.value)
    finally:
        await engine.dispose()


async def test_an_in_memory_database_migrates_in_process():
    engine = db.create_engine("sqlite://")
    try:
        await db.migrate(engine)
        import migrations

        assert await db.schema_revision(engine) == migrations.HEAD
    finally:
        await engine.dispose()


def test_0003_fills_in_the_callback_host_of_existing_subscriptions(tmp_path):
    """An upgrade from 0002 keeps every subscription and gives it the host the cap counts by."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(db.alembic_config(url), "0002_hub")
    con = sqlite3.connect(tmp_path / "old.db")
    for i, callback in enumerate(["http://Sub.Example:8080/cb?x=1", "https://bücher.example/cb", "http://10.0.0.7/"]):
        con.execute(
            "INSERT INTO hub_subscriptions (id, topic, callback, state, lease_seconds, verified_at, expires_at,"
            " seq, failed, updated_at) VALUES (?, 'http://t.example/', ?, 'active', 60, 0, 60, 0, 0, 0)",
            (i + 1, callback),
        )
    con.commit()
    con.close()
    command.upgrade(db.alembic_config(url), "head")
    con = sqlite3.connect(tmp_path / "old.db")
    hosts = [row[0] for row in con.execute("SELECT callback_host FROM hub_subscriptions ORDER BY id")]
    con.close()
    assert hosts == ["sub.example", "xn--bcher-kva.example", "10.0.0.7"]
