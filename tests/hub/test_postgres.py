"""The hub's store on PostgreSQL: subscribe, fat ping, retries, ping with feed diffing, claims
shared by two hub processes (two apps on one database) without double sends."""

from __future__ import annotations

import httpx
import pytest

from tests import pgdb
from tests.hub import documents
from tests.hub.conftest import SUB, hub_settings, subscribe
from tests.hub.peers import Document
from tests.support import wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def pg_database(postgres_url):
    async with pgdb.scratch_database(postgres_url, migrate=True) as url:
        yield url


async def test_hub_on_postgresql(make_app, peer, pg_database):
    transport = httpx.ASGITransport(app=peer.app)
    app, client = await make_app(transport=transport, **hub_settings(database_url=pg_database))
    app2, _ = await make_app(transport=transport, **hub_settings(database_url=pg_database))  # a second process
    topic = "http://pub.test/t"
    for i in range(20):
        await subscribe(client, peer, topic, f"{SUB}/cb/{i}", secret="k")
    peer.delivery_status["/cb/0"] = [500]
    r = await client.post(f"/publish?hub.topic={topic}", content=b"fat", headers={"Content-Type": "text/plain"})
    assert r.status_code == 204
    await wait_for(lambda: len({d.path for d in peer.deliveries}) == 20)
    await wait_for(lambda: len(peer.to("/cb/0")) == 2)  # retried once
    assert all(len(peer.to(f"/cb/{i}")) == 1 for i in range(1, 20))  # two processes, no double sends
    peer.documents["/feed.xml"] = Document("application/atom+xml", documents.atom([1]))
    await subscribe(client, peer, "http://pub.test/feed.xml", SUB + "/feed")
    peer.documents["/feed.xml"] = Document("application/atom+xml", documents.atom([1, 2]))
    r = await client.post("/publish", data={"hub.mode": "publish", "hub.url": "http://pub.test/feed.xml"})
    assert r.status_code == 204
    await wait_for(lambda: bool(peer.to("/feed")))
    assert b"Entry 2" in peer.to("/feed")[0].body and b"Entry 1" not in peer.to("/feed")[0].body
    del app2
