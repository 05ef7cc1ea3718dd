"""Topic rows (issue 13, M6): a hub.url ping is unauthenticated, so a ping of a topic nobody
subscribes to stores nothing, and topics left without subscribers are deleted once idle; the row
count stays bounded by what subscribers asked for, not by what pingers send."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from hub import store
from hub.models import Topic
from tests.test_ratelimit import limited

pytestmark = pytest.mark.anyio


def ping(*topics: str) -> dict[str, list[str] | str]:
    return {"hub.mode": "publish", "hub.url": list(topics)}


async def topics(app) -> int:
    async with app.state.services.sessions() as s:
        return int((await s.execute(select(func.count()).select_from(Topic))).scalar_one())


async def test_pings_of_topics_nobody_subscribes_to_store_no_row(make_app):
    app, c = await limited(make_app)
    for n in range(5):
        urls = [f"https://t.example/{'x' * 400}/{n}/{i}" for i in range(100)]
        assert (await c.post("/publish", data=ping(*urls))).status_code == 204
    assert await topics(app) == 0


async def test_a_ping_of_a_subscribed_topic_is_recorded(make_app):
    app, c = await limited(make_app)
    sessions = app.state.services.sessions
    await store.activate(sessions, "https://t.example/feed", "https://cb.example/1", None, 3600, time.time())
    assert (await c.post("/publish", data=ping("https://t.example/feed"))).status_code == 204
    async with sessions() as s:
        topic = (await s.execute(select(Topic).where(Topic.url == "https://t.example/feed"))).scalar_one()
    assert topic.ping_at is not None


async def test_idle_topics_without_subscribers_are_pruned(make_app):
    app, _ = await limited(make_app)
    sessions = app.state.services.sessions
    now = time.time()
    await store.activate(sessions, "https://t.example/kept", "https://cb.example/1", None, 3600, now)
    await store.activate(sessions, "https://t.example/ended", "https://cb.example/2", None, 3600, now)
    await store.deactivate(sessions, "https://t.example/ended", "https://cb.example/2", "unsubscribed")
    async with store.writing(sessions) as s:
        for i in range(3):
            await store.ensure_topic(s, f"https://t.example/lone/{i}", now)
    assert await topics(app) == 5
    assert await store.prune_topics(sessions, now - 3600) == 0  # touched just now: a verification may be on
    # A day on (the fetcher may have put a subscribed topic's next poll up to an hour ahead):
    assert await store.prune_topics(sessions, now + 24 * 3600) == 4
    async with sessions() as s:
        left = list((await s.execute(select(Topic.url))).scalars())
    assert left == ["https://t.example/kept"]
