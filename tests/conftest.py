"""Shared fixtures: a migrated SQLite template, app/client factories, real-socket servers.

Factories over fixtures: ``make_app(**settings_overrides)`` returns a started app and an
``httpx.AsyncClient`` on it; tests that need two apps (two processes' worth) call it twice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from reversehub.core import db
from reversehub.core.broker import Broker
from reversehub.core.outbound import Outbound
from reversehub.core.settings import Settings
from reversehub.server.app import create_app
from tests.support import (  # noqa: F401  (fixtures re-exported for every test module)
    postgres_url,
    redis_url,
    require_service,
    serve_live,
)

PUBLIC = "http://hub.test"
CLIENT = ("203.0.113.7", 4711)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's async engine needs asyncio


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head per session; each test copies it."""
    import asyncio

    path = tmp_path_factory.mktemp("template") / "template.db"

    async def build() -> None:
        engine = db.create_engine(f"sqlite:///{path}")
        await db.migrate(engine)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        await engine.dispose()

    asyncio.run(build())
    return path


@pytest.fixture
def database_url(_template_db: Path, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite copy; with REVERSEHUB_TEST_DATABASE=postgresql a fresh PostgreSQL database instead."""
    if os.environ.get("REVERSEHUB_TEST_DATABASE") == "postgresql":
        from tests import pgdb

        yield from pgdb.per_test_database()
        return
    path = tmp_path / "reversehub.db"
    shutil.copyfile(_template_db, path)
    yield f"sqlite:///{path}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Fast timeouts so tests run in milliseconds; override with dataclasses.replace."""
    return Settings(
        database_url=database_url,
        public_url=PUBLIC,
        migrate=False,
        allow_private_networks=True,
        poll_timeout=1.0,
        unavailable_timeout=0.5,
        reply_timeout=2.0,
    )


@asynccontextmanager
async def started(app: Starlette, client: tuple[str, int] = CLIENT) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an in-process client on its public URL."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url=app.state.settings.public_origin) as c:
            yield c


MakeApp = Callable[..., Awaitable[tuple[Starlette, httpx.AsyncClient]]]


@pytest.fixture
async def make_app(settings: Settings) -> AsyncIterator[MakeApp]:
    """``app, client = await make_app(transport=... or outbound=..., broker=..., **settings_overrides)``."""
    async with AsyncExitStack() as stack:

        async def factory(
            *,
            transport: httpx.AsyncBaseTransport | None = None,
            broker: Broker | None = None,
            outbound: Outbound | None = None,
            **overrides: Any,
        ) -> tuple[Starlette, httpx.AsyncClient]:
            app = create_app(replace(settings, **overrides), broker=broker, transport=transport, outbound=outbound)
            client = await stack.enter_async_context(started(app))
            return app, client

        yield factory


@pytest.fixture
async def app_client(make_app: MakeApp) -> tuple[Starlette, httpx.AsyncClient]:
    return await make_app()


@pytest.fixture
async def client(app_client: tuple[Starlette, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_client[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
