"""Honest failures (issue 13, M8): a database that is full or read-only, a broker that is down.

The faults are real: SQLite on a small tmpfs that a file fills up (mounting needs root; the tests
skip without it), PostgreSQL with ``default_transaction_read_only``, and a Redis client pointed at a
port where nothing listens. What must hold:

- a publish or a registration the database cannot store is answered 503 with ``Retry-After``, never
  500 and never 2xx; ``/healthz`` (liveness) stays 200 and ``/readyz`` says 503;
- a callback that echoed its challenge while the write failed gets its subscription once the
  database has room again (it counts itself subscribed, WebSub 5.3).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from hub import store
from hub.signing import ownership_proof
from reversehub.core import db
from reversehub.core.broker.redis import RedisBroker
from reversehub.server import health
from tests import pgdb
from tests.disks import SmallDisk, small_disk
from tests.hub.conftest import hub_settings, subscribe
from tests.hub.peers import Peer, form
from tests.instances import OwnPostgres, own_postgres
from tests.support import free_port, wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/feed"
CALLBACK = "http://sub.test/cb"
FAT = {"headers": {"Content-Type": "text/plain"}, "content": b"x" * 64 * 1024}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk") as d:
        yield d


@pytest.fixture
def quick_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "READY_HOLD", 1.0)  # /readyz's memory of a failed write, shortened for the test


async def _on_disk(make_app, disk: SmallDisk, template: Path, peer: Peer):
    path = disk.mount / "reversehub.db"
    shutil.copyfile(template, path)
    return await make_app(
        transport=httpx.ASGITransport(app=peer.app), database_url=f"sqlite:///{path}", **hub_settings()
    )


def _unavailable(r: httpx.Response) -> bool:
    return r.status_code == 503 and int(r.headers["Retry-After"]) > 0 and "unavailable" in r.text


async def test_a_full_disk_is_503_with_retry_after_and_not_ready(disk, _template_db, make_app, quick_readiness, caplog):
    peer = Peer()
    _, client = await _on_disk(make_app, disk, _template_db, peer)
    assert (await client.post(f"/publish?hub.topic={TOPIC}", **FAT)).status_code == 204
    assert (await client.get("/readyz")).status_code == 200

    disk.fill()
    assert _unavailable(await client.post(f"/publish?hub.topic={TOPIC}", **FAT))
    # A ping of a topic the hub holds (the fat ping made its row) is a write; one of a topic it does
    # not hold writes nothing, so it is not a storage question.
    assert _unavailable(await client.post("/publish", data={"hub.mode": "publish", "hub.url": TOPIC}))
    assert _unavailable(await client.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"}))
    assert (await client.get("/healthz")).status_code == 200  # liveness: the process is fine
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and "Retry-After" in ready.headers
    assert "INSERT" not in caplog.text  # the log names the fault, not the statement and its parameters

    disk.free()
    assert (await client.post(f"/publish?hub.topic={TOPIC}", **FAT)).status_code == 204
    assert (await client.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})).status_code == 201

    async def ready_again() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await wait_for(ready_again, timeout=5)


async def test_a_verified_subscription_is_stored_once_the_disk_has_room(disk, _template_db, make_app, caplog):
    peer = Peer()
    app, client = await _on_disk(make_app, disk, _template_db, peer)
    sessions = app.state.hub.services.sessions
    # A server that has been writing (its write-ahead log and shared-memory index exist), then the disk fills.
    assert (await client.post(f"/publish?hub.topic={TOPIC}", **FAT)).status_code == 204
    disk.fill()
    caplog.set_level(logging.WARNING, logger="hub")
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=CALLBACK, secret="s"))
    assert r.status_code == 202
    # The callback echoes the challenge: from now on it counts itself subscribed.
    await wait_for(lambda: any(v["_path"] == "/cb" for v in peer.verifications), timeout=5)
    await wait_for(lambda: "verified subscriptions failed" in caplog.text, timeout=5)
    assert await store.find(sessions, TOPIC, CALLBACK) is None

    disk.free()

    async def stored() -> bool:
        sub = await store.find(sessions, TOPIC, CALLBACK)
        return sub is not None and sub.state == "active"

    await wait_for(stored, timeout=10)
    assert len([v for v in peer.verifications if v["_path"] == "/cb"]) == 1  # stored, not asked again


@pytest.fixture
async def broker_down() -> AsyncIterator[RedisBroker]:
    """A real Redis client for a port where nothing listens (set up before the app, closed after it)."""
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}", connect_timeout=0.2, command_timeout=0.5)
    yield broker
    await broker.aclose()


async def test_a_broker_that_is_down_is_503_and_not_ready(broker_down, make_app):
    peer = Peer()
    _, client = await make_app(transport=httpx.ASGITransport(app=peer.app), broker=broker_down, **hub_settings())
    await subscribe(client, peer, TOPIC, CALLBACK, secret="s")
    ts = int(time.time())
    params = {"hub.callback": CALLBACK, "hub.topic": TOPIC, "hub.timestamp": str(ts)}
    params["hub.signature"] = ownership_proof("s", "status", CALLBACK, TOPIC, ts)
    r = await client.get("/hub/status", params=params)  # a proof is used once: the broker must remember it
    assert _unavailable(r) and "broker" in r.text
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and "broker" in ready.text


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database of its own (set up before the app, dropped after it)."""
    async with pgdb.scratch_database(postgres_url, migrate=True) as url:
        yield url


async def _read_only(postgres_url: str, name: str, on: bool) -> None:
    """``default_transaction_read_only`` for database ``name``, and its sessions ended so that the
    server's pool reconnects with it (the setting applies to new sessions)."""
    admin = create_async_engine(db.async_url(pgdb.database_url(postgres_url, "postgres")), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
            await conn.execute(text(f'ALTER DATABASE "{name}" {setting}'))
            await conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
            )
    finally:
        await admin.dispose()


async def test_a_read_only_postgresql_is_503_and_not_ready(pg_database, postgres_url, make_app, quick_readiness):
    peer = Peer()
    name = make_url(pg_database).database
    _, client = await make_app(transport=httpx.ASGITransport(app=peer.app), database_url=pg_database, **hub_settings())
    assert (await client.post(f"/publish?hub.topic={TOPIC}", **FAT)).status_code == 204

    await _read_only(postgres_url, name, True)
    assert _unavailable(await client.post(f"/publish?hub.topic={TOPIC}", **FAT))
    ready = await client.get("/readyz")
    assert ready.status_code == 503

    await _read_only(postgres_url, name, False)

    async def publishes() -> bool:
        return (await client.post(f"/publish?hub.topic={TOPIC}", **FAT)).status_code == 204

    await wait_for(publishes, timeout=5)


async def test_the_relay_hot_paths_answer_503_when_the_database_cannot_be_read(disk, _template_db, make_app):
    """Public and request URLs skip Starlette's exception layer (reversehub.server.app.ReverseHub): the
    same mapping holds there. A database whose disk filled before its write-ahead log's index could
    be made fails even reads ("disk I/O error")."""
    peer = Peer()
    _, client = await _on_disk(make_app, disk, _template_db, peer)
    disk.fill()
    assert _unavailable(await client.get("/relay/alice/"))
    reply = await client.post("/reversehttp/r/" + "A" * 56, content=b"HTTP/1.1 200 OK\r\n\r\n")
    assert reply.status_code in (404, 503), reply.text  # a made-up capability may be refused before any read


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this test's own, to stop and start (never the shared one)."""
    with own_postgres() as server:
        yield server


async def test_a_subscription_verified_as_postgresql_goes_away_is_stored_when_it_is_back(own_pg, make_app, caplog):
    """Issue 14: 107 of 121 callbacks echoed their challenge during an outage and were never stored
    (asyncpg's bare ConnectionRefusedError was not taken for an outage, so nothing retried)."""
    database = await pgdb.create_database(own_pg.url, migrate=True)
    peer = Peer()

    def echo_as_the_server_stops(params: dict[str, str]) -> tuple[int, str]:
        own_pg.stop()  # the hub's write after this echo finds no server
        return 200, params["hub.challenge"]

    peer.verify_answer["/cb"] = echo_as_the_server_stops
    app, client = await make_app(transport=httpx.ASGITransport(app=peer.app), database_url=database, **hub_settings())
    caplog.set_level(logging.WARNING, logger="hub")
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=CALLBACK, secret="s"))
    assert r.status_code == 202
    await wait_for(lambda: "verified subscriptions failed" in caplog.text, timeout=20)
    own_pg.start()

    async def stored() -> bool:
        try:
            sub = await store.find(app.state.hub.services.sessions, TOPIC, CALLBACK)
        except Exception:
            return False
        return sub is not None and sub.state == "active"

    await wait_for(stored, timeout=40, interval=0.2)
    assert len(peer.verified("/cb")) == 1  # stored, not asked again


async def test_a_subscribe_accepted_while_postgresql_is_away_is_verified_when_it_is_back(own_pg, make_app, caplog):
    """Its checks read the database before the verification GET: on main that read failed and the
    verification was dropped, so the subscribe answered 202 never happened."""
    database = await pgdb.create_database(own_pg.url, migrate=True)
    peer = Peer()
    app, client = await make_app(transport=httpx.ASGITransport(app=peer.app), database_url=database, **hub_settings())
    caplog.set_level(logging.WARNING, logger="hub")
    own_pg.stop()
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=CALLBACK))
    assert r.status_code == 202
    await wait_for(lambda: "a subscribe's checks" in caplog.text, timeout=20)
    assert not peer.verified("/cb")
    own_pg.start()

    async def stored() -> bool:
        try:
            sub = await store.find(app.state.hub.services.sessions, TOPIC, CALLBACK)
        except Exception:
            return False
        return sub is not None and sub.state == "active"

    await wait_for(stored, timeout=40, interval=0.2)
    assert len(peer.verified("/cb")) == 1
