"""Feed state with a real ``reversehub serve``, a real publisher serving its feed and a real
subscriber's callback server (issue 15): a fat ping followed by pings and polls wedges nothing,
and a subscriber never gets the back catalogue: not when the feed was away when it subscribed,
not when it comes to a topic nobody listened to for a while."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.hub.proofs import status_params
from tests.hub.test_feed_state import atom, entries
from tests.live.test_mailbox_live import Server
from tests.support import serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

ATOM = {"Content-Type": "application/atom+xml"}


class Publisher:
    """A publisher's web server (``/feed.xml``, with ETags) and its subscribers' callbacks (``/cb/NAME``)."""

    def __init__(self) -> None:
        self.feed = atom({1: 0})
        self.status = 200
        self.served: list[bytes] = []  # the feed bodies answered 200
        self.deliveries: dict[str, list[bytes]] = {}
        self.app = Starlette(
            routes=[
                Route("/feed.xml", self.feed_xml),
                Route("/cb/{name}", self.callback, methods=["GET", "POST"]),
            ]
        )

    async def feed_xml(self, request: Request) -> Response:
        if self.status != 200:
            return Response(status_code=self.status)
        etag = '"' + hashlib.sha1(self.feed).hexdigest() + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        self.served.append(self.feed)
        return Response(self.feed, media_type="application/atom+xml", headers={"ETag": etag})

    async def callback(self, request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "GET":
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        self.deliveries.setdefault(name, []).append(await request.body())
        return Response(status_code=204)

    def got(self, name: str) -> list[list[tuple[int, int]]]:
        return [entries(body) for body in self.deliveries.get(name, [])]


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Server:
    # Fast polls: a pinged topic's safety-net poll comes within 3 s.
    srv = Server(tmp_path, "--allow-private-networks", "--poll-min-interval", "0.5", "--poll-max-interval", "3")

    def stop() -> None:
        srv.stop()
        print(srv.log.read_text(errors="replace")[-4000:])  # shown when a test fails

    request.addfinalizer(stop)
    return srv


async def _state(client: httpx.AsyncClient, hub: str, callback: str, topic: str) -> str | None:
    r = await client.get(f"{hub}/hub/status", params=status_params("s3cret", callback, topic))
    return r.json()["state"] if r.status_code == 200 else None


async def _request(client: httpx.AsyncClient, hub: str, mode: str, topic: str, callback: str) -> None:
    form = {"hub.mode": mode, "hub.topic": topic, "hub.callback": callback, "hub.secret": "s3cret"}
    assert (await client.post(f"{hub}/hub", data=form)).status_code == 202
    want = "active" if mode == "subscribe" else "unsubscribed"

    async def done() -> bool:
        return await _state(client, hub, callback, topic) == want

    await wait_for(done, timeout=15, interval=0.1)


async def _ping(client: httpx.AsyncClient, hub: str, topic: str) -> None:
    r = await client.post(f"{hub}/publish", data={"hub.mode": "publish", "hub.url": topic})
    assert r.status_code == 204, r.text


async def test_a_fat_ping_then_pings_and_polls_wedge_nothing(server: Server) -> None:
    pub = Publisher()
    async with serve_live(pub.app) as base, httpx.AsyncClient(timeout=10) as client:
        server.start()
        await server.ready(client)
        feed = f"{base}/feed.xml"
        await _request(client, server.base, "subscribe", feed, f"{base}/cb/a")
        r = await client.post(
            f"{server.base}/publish", params={"hub.topic": feed}, content=atom({2: 0, 1: 0}), headers=ATOM
        )
        assert r.status_code == 204
        await wait_for(lambda: len(pub.got("a")) == 1, timeout=15)
        pub.feed = atom({3: 0, 2: 0, 1: 0})
        await _ping(client, server.base, feed)  # its fetch failed (IntegrityError), and every one after
        await wait_for(lambda: len(pub.got("a")) == 2, timeout=15)
        pub.feed = atom({4: 0, 3: 0, 2: 0, 1: 0})  # no ping: the safety-net poll finds it
        await wait_for(lambda: len(pub.got("a")) == 3, timeout=20)
        assert pub.got("a") == [[(2, 0), (1, 0)], [(3, 0)], [(4, 0)]]


async def test_no_back_catalogue_for_new_subscribers(server: Server) -> None:
    pub = Publisher()
    pub.status = 404
    async with serve_live(pub.app) as base, httpx.AsyncClient(timeout=10) as client:
        server.start()
        await server.ready(client)
        feed = f"{base}/feed.xml"
        await _request(client, server.base, "subscribe", feed, f"{base}/cb/a")  # its baseline fetch: 404
        pub.status = 200
        pub.feed = atom(dict.fromkeys(range(1, 51), 0))
        await _ping(client, server.base, feed)  # all 50 entries went out
        await wait_for(lambda: pub.feed in pub.served, timeout=15)
        pub.feed = atom(dict.fromkeys(range(1, 52), 0))
        await _ping(client, server.base, feed)
        await wait_for(lambda: len(pub.got("a")) == 1, timeout=15)
        assert pub.got("a") == [[(51, 0)]]

        # Nobody listens for a while; the next subscriber gets only what comes after it subscribed.
        await _request(client, server.base, "unsubscribe", feed, f"{base}/cb/a")
        pub.feed = atom(dict.fromkeys(range(1, 54), 0))
        await _request(client, server.base, "subscribe", feed, f"{base}/cb/b")
        pub.feed = atom(dict.fromkeys(range(1, 55), 0))
        await _ping(client, server.base, feed)
        await wait_for(lambda: len(pub.got("b")) == 1, timeout=15)
        assert pub.got("b") == [[(54, 0)]]
        assert pub.got("a") == [[(51, 0)]]
