"""Publishing: fat pings, hub.url pings with feed diffing, polling, SUP, our own SUP document."""

from __future__ import annotations

import hashlib
import json
import time

import feedparser
import pytest

from hub import sup
from tests.hub import documents
from tests.hub.conftest import SUB, subscribe
from tests.hub.peers import Document
from tests.support import wait_for

pytestmark = pytest.mark.anyio

FEED = "http://pub.test/feed.xml"
ATOM = "application/atom+xml"


async def ping(client, *urls, path="/publish", key="hub.url"):
    r = await client.post(path, data={"hub.mode": "publish", key: list(urls)})
    assert r.status_code == 204, r.text


def titles(body: bytes) -> list[str]:
    return [e.title for e in feedparser.parse(body).entries]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/plain", b"Hello world"), ("application/json", b'{"hello": "world"}'), ("text/html", b"<p>hi</p>")],
)
async def test_105_106_fat_ping_goes_out_as_it_is(hub, peer, content_type, body):
    app, client = hub
    await subscribe(client, peer, "http://pub.test/t", SUB + "/cb")
    r = await client.post("/publish?hub.topic=http://pub.test/t", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 204
    await wait_for(lambda: bool(peer.to("/cb")))
    (d,) = peer.to("/cb")
    assert (d.body, d.headers["content-type"]) == (body, content_type)


async def test_fat_ping_is_committed_before_the_answer(hub, peer):
    app, client = hub
    await subscribe(client, peer, "http://pub.test/t", SUB + "/cb")
    app.state.hub.outbox.close()  # no worker sends: only the rows tell
    r = await client.post("/publish?hub.topic=http://pub.test/t", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 204
    from sqlalchemy import select

    from hub.models import Delivery, Payload

    async with app.state.hub.services.sessions() as s:
        assert (await s.execute(select(Payload.body))).scalars().all() == [b"x"]
        assert [d.state for d in (await s.execute(select(Delivery))).scalars()] == ["pending"]


TEXT = {"Content-Type": "text/plain"}


async def test_a_fat_ping_counts_a_version_and_puts_off_polling_the_topic(make_hub, peer):
    app, client = await make_hub(poll_max_interval=600)
    await subscribe(client, peer, "http://pub.test/t", SUB + "/cb")
    from sqlalchemy import select, update

    from hub.models import Topic

    sessions = app.state.hub.services.sessions
    async with sessions.begin() as s:  # as if fetched once: a fat ping keeps that baseline
        await s.execute(update(Topic).values(fetched_at=1.0))
    for version in (1, 2):
        before = time.time()
        r = await client.post(
            "/publish?hub.topic=http://pub.test/t", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 204
        async with sessions() as s:
            (topic,) = (await s.execute(select(Topic))).scalars().all()
        assert topic.version == version and topic.fetched_at == 1.0
        assert topic.body_hash == hashlib.sha256(b"x").hexdigest()  # a fetch of the same body sends nothing
        assert before <= topic.updated_at <= topic.pinged_at <= time.time()
        assert before + 600 <= topic.next_poll_at <= time.time() + 600
    # A fat ping to a topic nobody subscribed to yet creates it the same way.
    r = await client.post(
        "/publish?hub.topic=http://pub.test/new", content=b"y", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 204
    async with sessions() as s:
        new = (await s.execute(select(Topic).where(Topic.url == "http://pub.test/new"))).scalar_one()
    assert new.version == 1 and new.fetched_at is None and new.next_poll_at >= time.time() + 590  # no baseline yet


@pytest.mark.parametrize(
    ("query", "data", "status", "reason"),
    [
        ("", b"text", 400, "hub.topic"),
        ("?hub.topic=notaurl", b"text", 400, "hub.topic"),
        ("", b"hub.mode=publish", 400, "hub.url is required"),
        ("", b"hub.mode=publish&hub.url=ftp://x/y", 400, "hub.url"),
    ],
)
async def test_bad_publishes_are_400(hub, query, data, status, reason):
    _, client = hub
    ct = "application/x-www-form-urlencoded" if data.startswith(b"hub.") else "text/plain"
    r = await client.post("/publish" + query, content=data, headers={"Content-Type": ct})
    assert r.status_code == status and reason in r.text


async def test_fat_ping_over_the_size_limit_is_413(make_hub):
    _, client = await make_hub(max_topic_size=10)
    r = await client.post("/publish?hub.topic=http://pub.test/t", content=b"x" * 11, headers={"Content-Type": "a/b"})
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("path", "key"),
    [("/publish", "hub.url"), ("/publish", "hub.url[]"), ("/publish", "hub.topic"), ("/hub", "hub.url")],
)
async def test_ping_fetches_and_sends_only_new_entries(hub, peer, path, key):
    app, client = hub
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1, 2]))
    await subscribe(client, peer, FEED, SUB + "/cb")
    assert len(peer.fetches) == 1  # the baseline, fetched before the verification
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([3, 1, 2]))
    await ping(client, FEED, path=path, key=key)
    await wait_for(lambda: bool(peer.to("/cb")))
    (d,) = peer.to("/cb")
    assert d.headers["content-type"] == ATOM and titles(d.body) == ["Entry 3"]
    assert feedparser.parse(d.body).feed.title == "Example Feed"


async def test_ping_of_an_unchanged_topic_is_a_conditional_get(hub, peer):
    app, client = hub
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1]))
    await subscribe(client, peer, FEED, SUB + "/cb")
    await ping(client, FEED)
    await wait_for(lambda: len(peer.fetches) == 2)
    assert peer.fetches[1][1]["if-none-match"]  # the ETag of the baseline
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1, 2]))
    await ping(client, FEED)
    await wait_for(lambda: bool(peer.to("/cb")))
    assert [titles(d.body) for d in peer.to("/cb")] == [["Entry 2"]]


async def test_ping_of_other_content_sends_it_whole_when_changed(hub, peer):
    app, client = hub
    peer.documents["/page"] = Document("text/html", b"<p>one</p>")
    await subscribe(client, peer, "http://pub.test/page", SUB + "/cb")
    peer.documents["/page"] = Document("text/html", b"<p>two</p>", headers={"Cache-Control": "no-cache"})
    await ping(client, "http://pub.test/page")
    await wait_for(lambda: bool(peer.to("/cb")))
    assert peer.to("/cb")[0].body == b"<p>two</p>"


async def test_one_ping_several_topics(hub, peer):
    app, client = hub
    for name in ("a", "b"):
        peer.documents[f"/{name}.json"] = Document("application/feed+json", documents.json_feed([1]))
        await subscribe(client, peer, f"http://pub.test/{name}.json", SUB + f"/{name}")
        peer.documents[f"/{name}.json"] = Document("application/feed+json", documents.json_feed([1, 2]))
    await ping(client, "http://pub.test/a.json", "http://pub.test/b.json")
    await wait_for(lambda: bool(peer.to("/a")) and bool(peer.to("/b")))
    assert [i["id"] for i in json.loads(peer.to("/a")[0].body)["items"]] == ["j2"]


async def test_unpinged_subscribed_topics_are_polled(make_hub, peer):
    app, client = await make_hub(poll_min_interval=0.02, poll_max_interval=0.2)
    peer.documents["/feed.xml"] = Document(ATOM, documents.rss2([1]))
    await subscribe(client, peer, FEED, SUB + "/cb")
    peer.documents["/feed.xml"] = Document(ATOM, documents.rss2([1, 2]))
    await wait_for(lambda: bool(peer.to("/cb")))
    assert [e.title for e in feedparser.parse(peer.to("/cb")[0].body).entries] == ["Item 2"]
    fetches = len(peer.fetches)
    await wait_for(lambda: len(peer.fetches) >= fetches + 2)  # still polling, conditionally
    assert all("if-none-match" in h for _, h in peer.fetches[fetches:])
    assert len(peer.to("/cb")) == 1


async def test_sup_document_drives_fetches(make_hub, peer):
    app, client = await make_hub(poll_min_interval=0.02, poll_max_interval=3600)
    sup_headers = {"X-SUP-ID": "http://pub.test/sup.json#feed42"}
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1]), headers=sup_headers)
    peer.documents["/sup.json"] = Document(
        "application/json", json.dumps({"period": 0.02, "updates": [["other", "1"]]}).encode()
    )
    await subscribe(client, peer, FEED, SUB + "/cb")
    await wait_for(lambda: any(path == "/sup.json" for path, _ in peer.fetches))
    feed_fetches = sum(1 for path, _ in peer.fetches if path == "/feed.xml")
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1, 2]), headers=sup_headers)
    peer.documents["/sup.json"] = Document(
        "application/json", json.dumps({"period": 0.02, "updates": [["feed42", "u2"], ["other", "1"]]}).encode()
    )
    await wait_for(lambda: bool(peer.to("/cb")))
    assert titles(peer.to("/cb")[0].body) == ["Entry 2"]
    assert sum(1 for path, _ in peer.fetches if path == "/feed.xml") == feed_fetches + 1


async def test_sup_link_element_in_the_feed(make_hub, peer):
    app, client = await make_hub(poll_min_interval=0.02, poll_max_interval=3600)
    link = '\n  <link rel="http://api.friendfeed.com/2008/08/24#sup" href="http://pub.test/sup.json#f1"/>'
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1], extra_head=link))
    peer.documents["/sup.json"] = Document("application/json", b'{"period": 0.02, "updates": []}')
    await subscribe(client, peer, FEED, SUB + "/cb")
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1, 2], extra_head=link))
    peer.documents["/sup.json"] = Document("application/json", b'{"period": 0.02, "updates": [["f1", "9"]]}')
    await wait_for(lambda: bool(peer.to("/cb")))
    assert titles(peer.to("/cb")[0].body) == ["Entry 2"]


def test_sup_parsing():
    doc = sup.parse(b'{"period": 30, "since_time": "x", "updates": [["a", "1"], ["b", "2"], "junk"]}')
    assert doc.period == 30 and doc.updates == {"a": "1", "b": "2"}
    assert sup.split("http://x/sup.json#12345") == sup.SupLink("http://x/sup.json", "12345")
    assert sup.split("http://x/sup.json") is None
    with pytest.raises(ValueError):
        sup.parse(b'{"period": 30}')


async def test_own_sup_document_lists_updated_topics(hub, peer):
    app, client = hub
    await subscribe(client, peer, "http://pub.test/t", SUB + "/cb")
    for _ in range(2):
        await client.post("/publish?hub.topic=http://pub.test/t", content=b"x", headers={"Content-Type": "a/b"})
    r = await client.get("/sup")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["period"] == 60 and [sup.sup_id("http://pub.test/t"), "2"] in doc["updates"]
    assert doc["available_periods"]["300"] == "http://hub.test/sup?seconds=300"
    assert (await client.get("/sup?seconds=300")).json()["period"] == 300


async def test_metrics_count_publishes_and_deliveries(hub, peer):
    app, client = hub
    await subscribe(client, peer, "http://pub.test/t", SUB + "/cb")
    await client.post("/publish?hub.topic=http://pub.test/t", content=b"x", headers={"Content-Type": "a/b"})
    await wait_for(lambda: bool(peer.to("/cb")))
    await wait_for(lambda: _metric(client, 'hub_deliveries_total{outcome="delivered"} 1.0'))
    text = (await client.get("/metrics")).text
    assert 'hub_publishes_total{kind="fat"} 1.0' in text
    assert "hub_delivery_latency_seconds_count 1.0" in text and "hub_outbox_pending" in text


async def _metric(client, line):
    return line in (await client.get("/metrics")).text


async def test_a_fat_ping_says_how_many_subscriptions_it_was_queued_for(hub, peer):
    """X-Hub-Deliveries (docs/errors.md): 0 tells a publisher that nobody subscribes (a typo'd topic)."""
    from clients import AsyncPublisher

    app, client = hub
    url = "/publish?hub.topic=http://pub.test/deliveries"
    r = await client.post(url, content=b"x", headers=TEXT)
    assert (r.status_code, r.headers["x-hub-deliveries"]) == (204, "0")
    await subscribe(client, peer, "http://pub.test/deliveries", SUB + "/one")
    await subscribe(client, peer, "http://pub.test/deliveries", SUB + "/two")
    r = await client.post(url, content=b"x", headers=TEXT)
    assert r.headers["x-hub-deliveries"] == "2"
    # With an Idempotency-Key: the count the first time, nothing counted again on a retry.
    keyed = {**TEXT, "Idempotency-Key": '"k1"'}
    r = await client.post(url, content=b"y", headers=keyed)
    assert (r.headers["x-hub-deliveries"], r.headers.get("idempotent-replayed")) == ("2", None)
    r = await client.post(url, content=b"y", headers=keyed)
    assert ("x-hub-deliveries" in r.headers, r.headers["idempotent-replayed"]) == (False, "true")
    # A ping is fetched later: the hub cannot say yet.
    r = await client.post("/publish", data={"hub.mode": "publish", "hub.url": "http://pub.test/deliveries"})
    assert (r.status_code, "x-hub-deliveries" in r.headers) == (204, False)
    async with AsyncPublisher(str(client.base_url.join("/hub")), transport=client._transport) as publisher:
        assert await publisher.publish("http://pub.test/deliveries", b"z") == 2
        assert await publisher.publish("http://pub.test/nobody", b"z") == 0
