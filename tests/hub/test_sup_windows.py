"""SUP that misses nothing (issue 15): a SUP document lists the feeds updated within its window
(``since_time`` .. ``updated_time``, ``period`` seconds), so the hub's polls of it must overlap;
where they cannot, every feed the document covers is fetched. And the hub's own SUP ids are
advertised on what it delivers (``X-SUP-ID``)."""

from __future__ import annotations

import json
import time

import feedparser
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from hub import sup
from tests.hub import documents
from tests.hub.conftest import SUB, hub_settings, subscribe
from tests.hub.peers import Document, Peer
from tests.support import wait_for

pytestmark = pytest.mark.anyio

FEED = "http://pub.test/feed.xml"
ATOM = "application/atom+xml"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class SupServer:
    """A publisher with a SUP document made at each request from its update log, as FriendFeed's
    was: the updates of the last ``period`` seconds. ``on_poll`` runs after each poll is answered
    (the document already made): what it changes happens just after that poll."""

    def __init__(self, peer: Peer, period: float) -> None:
        self.peer = peer
        self.period = period
        self.log: list[tuple[str, str, float]] = []  # (sup_id, update_id, when)
        self.polls: list[float] = []
        self.on_poll = None
        self.down = False  # answers 503

    def document(self, now: float) -> bytes:
        since = now - self.period
        return json.dumps(
            {
                "period": self.period,
                "since_time": _iso(since),
                "updated_time": _iso(now),
                "updates": [[i, u] for i, u, when in self.log if when >= since],
            }
        ).encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/sup.json":
            await self.peer.app(scope, receive, send)
            return
        now = time.time()
        self.polls.append(now)
        if self.down:
            await Response(status_code=503)(scope, receive, send)
            return
        await Response(self.document(now), media_type="application/json")(scope, receive, send)
        if self.on_poll is not None:
            self.on_poll(Request(scope), now)


def titles(body: bytes) -> list[str]:
    return [e.title for e in feedparser.parse(body).entries]


async def sup_hub(make_app, peer: Peer, period: float, **settings):
    server = SupServer(peer, period)
    headers = {"X-SUP-ID": "http://pub.test/sup.json#feed42"}
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([1]), headers=headers)
    app, client = await make_app(transport=httpx.ASGITransport(app=server), **hub_settings(**settings))
    await subscribe(client, peer, FEED, SUB + "/cb")
    return server, app, client, headers


async def test_an_update_listed_just_after_a_poll_is_not_missed(make_app, peer):
    # The period bounds how late the update may come: the hub polled every period, so each
    # window began where the last poll's had ended plus the time that poll took.
    server, app, client, headers = await sup_hub(make_app, peer, 1.0, poll_min_interval=0.05)
    await wait_for(lambda: len(server.polls) >= 1)
    feed_fetches = sum(1 for path, _ in peer.fetches if path == "/feed.xml")

    def update_right_after(_request: Request, polled_at: float) -> None:
        if not server.log:
            peer.documents["/feed.xml"] = Document(ATOM, documents.atom([2, 1]), headers=headers)
            server.log.append(("feed42", "u2", polled_at + 0.001))

    server.on_poll = update_right_after
    await wait_for(lambda: bool(peer.to("/cb")), timeout=15)
    assert titles(peer.to("/cb")[0].body) == ["Entry 2"]
    assert sum(1 for path, _ in peer.fetches if path == "/feed.xml") == feed_fetches + 1


async def test_a_document_that_leaves_a_gap_fetches_every_feed_it_covers(make_app, peer):
    server, app, client, headers = await sup_hub(make_app, peer, 1.0, poll_min_interval=0.05)
    await wait_for(lambda: len(server.polls) >= 1)
    # The SUP document is away for a few seconds, and the feed is updated meanwhile: the next
    # document's window does not reach back to the last one's, nor lists the update.
    server.down = True
    peer.documents["/feed.xml"] = Document(ATOM, documents.atom([2, 1]), headers=headers)
    server.log.append(("feed42", "u2", time.time()))
    down_since = len(server.polls)
    await wait_for(lambda: len(server.polls) >= down_since + 1 and server.polls[-1] > server.log[0][2] + 3.5)
    server.down = False
    await wait_for(lambda: bool(peer.to("/cb")), timeout=15)
    assert titles(peer.to("/cb")[0].body) == ["Entry 2"]


def test_sup_document_times_and_windows():
    doc = sup.parse(
        b'{"period": 60, "since_time": "2008-08-29T17:37:57Z", "update_time": "2008-08-29T17:39:07Z", "updates": []}'
    )
    assert doc.since_time == 1220031477.0 and doc.updated_time == 1220031547.0
    assert doc.window(0.0) == (1220031477.0, 1220031547.0)
    bare = sup.parse(b'{"period": 30, "updates": [], "since_time": "yesterday", "updated_time": 5}')
    assert bare.since_time is None and bare.updated_time is None and bare.window(100.0) == (70.0, 100.0)
    for period in (b"true", b"1e400", b"-1", b'"60"'):
        assert sup.parse(b'{"period": ' + period + b', "updates": []}').period == sup.DEFAULT_PERIOD
    assert sup.poll_wait(60.0, 1.0) == 30.0 and sup.poll_wait(0.2, 1.0) == 1.0
    assert not sup.gap(None, 100.0) and not sup.gap(100.0, 100.9) and sup.gap(100.0, 101.5)


async def test_deliveries_advertise_the_hubs_own_sup_id(hub, peer):
    app, client = hub
    await subscribe(client, peer, "http://pub.test/t", SUB + "/cb")
    r = await client.post("/publish?hub.topic=http://pub.test/t", content=b"x", headers={"Content-Type": "a/b"})
    assert r.status_code == 204
    await wait_for(lambda: bool(peer.to("/cb")))
    advertised = peer.to("/cb")[0].headers["x-sup-id"]
    assert advertised == "http://hub.test/sup#" + sup.sup_id("http://pub.test/t")
    link = sup.split(advertised)
    assert link is not None and link.url == "http://hub.test/sup"
    listed = (await client.get("/sup")).json()["updates"]
    assert [link.sup_id, "1"] in listed
