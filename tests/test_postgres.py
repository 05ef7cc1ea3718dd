"""PostgreSQL: migrations reach head and match the models, and the app's key paths run on it.

Every run gets its own databases (tests/pgdb.py): a template migrated once per module, and a copy
of it per test, dropped afterwards. Locally the module skips without a server; in CI it fails.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import make_url

from reversehub.core import db
from tests import pgdb
from tests.support import POSTGRES_DEFAULT, require_service

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture(scope="module")
def pg_server() -> str:
    url = os.environ.get("REVERSEHUB_TEST_POSTGRES_URL", POSTGRES_DEFAULT)
    parsed = make_url(url)
    require_service("PostgreSQL", parsed.host or "127.0.0.1", parsed.port or 5432)
    return url


@pytest.fixture(scope="module")
def pg_template(pg_server: str) -> Iterator[str]:
    """A database migrated to head once per module; tests get copies of it."""
    url = asyncio.run(pgdb.create_database(pg_server, migrate=True))
    yield url
    asyncio.run(pgdb.drop_database(url))


@pytest.fixture
async def database_url(pg_server: str, pg_template: str) -> str:  # overrides tests/conftest.py's SQLite one
    url = await pgdb.create_database(pg_server, template=make_url(pg_template).database)
    yield url
    await pgdb.drop_database(url)


TABLES = text("select tablename from pg_tables where schemaname = 'public'")


def _diff(conn):  # type: ignore[no-untyped-def]
    return compare_metadata(MigrationContext.configure(conn), db.Base.metadata)


async def test_head_matches_models_on_postgres(pg_server: str) -> None:
    import hub.models  # noqa: F401
    import relay.models  # noqa: F401

    async with pgdb.scratch_database(pg_server) as url:
        engine = db.create_engine(url)
        try:
            await db.migrate(engine)
            await db.migrate(engine)  # idempotent
            async with engine.connect() as conn:
                assert await conn.run_sync(_diff) == []
                tables = set(
                    (await conn.execute(text("select tablename from pg_tables where schemaname='public'"))).scalars()
                )
            assert {t.name for t in db.Base.metadata.sorted_tables} <= tables
        finally:
            await engine.dispose()


async def test_migrations_downgrade_to_base_and_up_again(pg_server: str) -> None:
    from alembic import command

    def down(conn) -> None:  # type: ignore[no-untyped-def]
        cfg = db.alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")

    async with pgdb.scratch_database(pg_server, migrate=True) as url:
        engine = db.create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(down)
            async with engine.connect() as conn:
                left = set(
                    (await conn.execute(text("select tablename from pg_tables where schemaname='public'"))).scalars()
                )
            assert left <= {"alembic_version"}
            await db.migrate(engine)
            async with engine.connect() as conn:
                assert await conn.run_sync(_diff) == []
        finally:
            await engine.dispose()


async def test_the_app_starts_on_postgres(make_app, database_url: str) -> None:
    assert make_url(database_url).get_backend_name() == "postgresql"
    app, client = await make_app()
    assert (await client.get("/healthz")).status_code == 200
    assert app.state.services.engine.dialect.name == "postgresql"


@pytest.mark.live
@pytest.mark.timeout(660)  # the child run has 600 s (its own tests 120 s each)
def test_relay_and_hub_suites_pass_on_postgres(pg_server: str) -> None:
    """The relay's and the hub's whole suites again, every test on its own PostgreSQL database.

    tests/conftest.py's ``database_url`` switches to PostgreSQL with REVERSEHUB_TEST_DATABASE; a
    child pytest keeps this run's fixtures (SQLite) apart from that one's.
    """
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "REVERSEHUB_TEST_DATABASE": "postgresql", "REVERSEHUB_TEST_POSTGRES_URL": pg_server}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/relay", "tests/hub"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


async def test_relay_leases_of_more_names_than_one_statement_can_bind(database_url: str) -> None:
    """40,000 polled names get their leases extended (PostgreSQL binds at most 32,767 per statement)."""
    from sqlalchemy import insert, select

    from relay.models import Registration
    from relay.registry import Registry
    from reversehub.core.settings import Settings

    engine = db.create_engine(database_url)
    try:
        names = [f"n{i}" for i in range(40_000)]
        rows = [
            {
                "name": n,
                "token_hash": "0" * 64,
                "secret": "0" * 64,
                "lease_seconds": 60.0,
                "created_at": 0.0,
                "expires_at": 1.0,
            }
            for n in names
        ]
        async with engine.begin() as conn:
            await conn.execute(insert(Registration), rows)
        registry = Registry(db.sessionmaker(engine), Settings(database_url=database_url))
        await registry.touch(set(names), now=1000.0)
        assert await registry.sweep(now=1000.0) == []
        async with engine.connect() as conn:
            expiries = set((await conn.scalars(select(Registration.expires_at))).all())
        assert expiries == {1060.0}
    finally:
        await engine.dispose()


@pytest.mark.timeout(60)
async def test_publish_skips_more_full_subscriptions_than_one_statement_can_bind(database_url: str) -> None:
    """33,000 subscriptions of one topic already hold their max_pending deliveries: the publish
    still goes through (PostgreSQL binds at most 32,767 parameters per statement), only the one
    subscription with room gets a delivery, and every subscription's seq and skip record advance."""
    from sqlalchemy import func, select

    from hub import store
    from hub.models import Delivery, Subscription

    topic, full = "http://pub.test/t", 33_000
    engine = db.create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "insert into hub_subscriptions (topic, callback, callback_host, state, lease_seconds,"
                    " verified_at, expires_at, seq, failed, updated_at)"
                    " select :topic, 'http://sub.test/cb/' || i, 'sub.test', 'active', 3600, 0, 1e12, 1, 0, 0"
                    " from generate_series(0, :n) as i"
                ),
                {"topic": topic, "n": full},  # callbacks 0..full: the last one has room
            )
            payload = (
                await conn.execute(
                    text(
                        "insert into hub_payloads (uid, topic, content_type, body, created_at)"
                        " values ('old', :topic, 'text/plain', 'old', 0) returning id"
                    ),
                    {"topic": topic},
                )
            ).scalar_one()
            await conn.execute(
                text(
                    "insert into hub_deliveries (payload_id, subscription_id, seq, state, attempts,"
                    " next_attempt_at, created_at) select :payload, id, 1, 'pending', 1, 1e12, 0"
                    " from hub_subscriptions where callback <> :roomy"
                ),
                {"payload": payload, "roomy": f"http://sub.test/cb/{full}"},
            )
        sessions = db.sessionmaker(engine)
        async with sessions.begin() as s:
            enqueued = await store.enqueue(s, topic, "text/plain", b"new", now=1000.0, max_pending=1)
        assert enqueued.deliveries == 1
        async with engine.connect() as conn:
            new = await conn.scalars(select(Delivery.subscription_id).where(Delivery.payload_id == enqueued.payload_id))
            roomy = (
                await conn.execute(select(Subscription.id).where(Subscription.callback == f"http://sub.test/cb/{full}"))
            ).scalar_one()
            assert new.all() == [roomy]
            tally = select(Subscription.seq, Subscription.failed, func.count())
            counts = (await conn.execute(tally.group_by(Subscription.seq, Subscription.failed))).all()
            assert sorted(counts) == [(2, 0, 1), (2, 1, full)]
            skipped = (
                await conn.execute(select(Subscription.last_failure).where(Subscription.failed == 1).limit(1))
            ).scalar_one()
            assert skipped is not None and "already pending" in skipped
    finally:
        await engine.dispose()
