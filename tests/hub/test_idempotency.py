"""``Idempotency-Key`` on publish (draft-ietf-httpapi-idempotency-key-header; issue 14 item 6).

A retried fat ping with the same key (per topic) within the retention window is stored once and
answered as the first was; the same key with another body is 422. The key commits with the payload,
so a publish that was stored before its answer was lost is not stored again on retry.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from hub.models import Payload, PublishKey
from hub.store import idempotency
from tests.hub.conftest import PUB, SUB, subscribe
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = PUB + "/feed"
CALLBACK = SUB + "/cb"


async def fat(client, body: bytes, key: str | bytes | None = None, topic: str = TOPIC):
    headers = {"Content-Type": "text/plain"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/publish", params={"hub.topic": topic}, content=body, headers=headers)


async def payloads(app) -> int:
    async with app.state.hub.services.sessions() as s:
        return (await s.execute(select(func.count()).select_from(Payload))).scalar_one()


async def test_a_retry_with_the_same_key_is_stored_once_and_answered_as_the_first(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, CALLBACK)
    first = await fat(client, b"update 1", '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    assert first.status_code == 204 and "Idempotent-Replayed" not in first.headers
    again = await fat(client, b"update 1", '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    assert again.status_code == 204 and again.headers["Idempotent-Replayed"] == "true"
    assert await payloads(app) == 1
    await wait_for(lambda: len(peer.to("/cb")) >= 1)
    assert (await fat(client, b"update 2")).status_code == 204  # a later publish, no key
    await wait_for(lambda: len(peer.to("/cb")) >= 2)
    bodies = [d.body for d in peer.to("/cb")]
    assert bodies == [b"update 1", b"update 2"]  # one webhook-id for the retried publish
    assert len({d.headers["webhook-id"] for d in peer.to("/cb")}) == 2


async def test_the_same_key_with_another_body_is_422(hub):
    app, client = hub
    assert (await fat(client, b"one", "k-1")).status_code == 204
    other = await fat(client, b"two", "k-1")
    assert other.status_code == 422 and "Idempotency-Key" in other.text
    assert await payloads(app) == 1


async def test_a_key_is_per_topic_and_without_one_every_publish_is_stored(hub):
    app, client = hub
    assert (await fat(client, b"x", "k")).status_code == 204
    assert (await fat(client, b"x", "k", topic=PUB + "/other")).status_code == 204
    assert (await fat(client, b"x")).status_code == 204
    assert (await fat(client, b"x")).status_code == 204
    assert await payloads(app) == 4


@pytest.mark.parametrize("key", ['""', "", "x" * 256, "na\xefve".encode("latin-1"), "a\tb"])
async def test_a_malformed_key_is_400(hub, key):
    _, client = hub
    r = await fat(client, b"x", key)
    assert r.status_code == 400, r.text


async def test_a_key_is_forgotten_after_the_retention_window(hub):
    app, client = hub
    assert (await fat(client, b"x", "k")).status_code == 204
    sessions = app.state.hub.services.sessions
    assert await idempotency.prune(sessions, time.time() - 60) == 0  # still within the window
    assert await idempotency.prune(sessions, time.time() + 1) == 1
    async with sessions() as s:
        assert (await s.execute(select(func.count()).select_from(PublishKey))).scalar_one() == 0
    r = await fat(client, b"x", "k")
    assert r.status_code == 204 and "Idempotent-Replayed" not in r.headers
    assert await payloads(app) == 2


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_database(request, database_url):
    if request.param == "sqlite":
        yield database_url
        return
    from tests import pgdb

    async with pgdb.scratch_database(request.getfixturevalue("postgres_url"), migrate=True) as url:
        yield url


async def test_attempts_racing_with_one_key_store_one_publish(make_hub, any_database):
    """On PostgreSQL both pass the lookup; the key's primary key lets one commit, the other answers as it."""
    import anyio

    app, client = await make_hub(database_url=any_database)
    statuses: list[int] = []

    async def attempt() -> None:
        statuses.append((await fat(client, b"same", "race")).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(attempt)
    assert statuses == [204] * 8
    assert await payloads(app) == 1
