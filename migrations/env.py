"""Alembic environment: async, and able to run on a connection handed in by the app.

``reversehub.core.db.migrate`` passes its open connection through ``config.attributes["connection"]``;
the ``reversehub db upgrade`` command and plain ``alembic`` use ``sqlalchemy.url``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import hub.models  # noqa: F401  (registers the hub's tables on Base.metadata)
import relay.models  # noqa: F401  (registers the relay's tables on Base.metadata)
from reversehub.core.db import Base, create_engine

target_metadata = Base.metadata
config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///./reversehub.db")
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    asyncio.run(_run_async())
