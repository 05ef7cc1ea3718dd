"""Alembic head matches the models, on SQLite (and on PostgreSQL in tests/test_postgres.py)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from reversehub import db

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
