"""The relay's memory is bounded by configuration (issue 13 H1, H2), in-process.

A body is looked at only once it can be held: a reply to a request URL that waits for none, a body
over the limit, and a request past a bound on held bytes are answered without reading their body.
``Body`` counts how much of a body the server read (httpx's ASGITransport hands the app a chunk only
when it asks for one). The real-socket side, with a server's RSS, is tests/live/test_relay_memory.py.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from functools import partial

import anyio
import httpx
import pytest

from relay.wire import HttpResponse, serialize_response
from reversehub.core.broker import Broker
from tests.relay.helpers import links, register
from tests.support import wait_for

pytestmark = pytest.mark.anyio

SIZE = 10_000
MADE_UP = "/reversehttp/r/" + "A" * 56


class Body:
    """An upload of ``chunks`` × ``chunk`` bytes that counts the chunks the server took."""

    def __init__(self, chunks: int, chunk: int = 1000) -> None:
        self.chunks = chunks
        self.chunk = chunk
        self.read = 0

    @property
    def size(self) -> int:
        return self.chunks * self.chunk

    async def __aiter__(self):
        for _ in range(self.chunks):
            self.read += 1
            yield b"x" * self.chunk


async def post(client: httpx.AsyncClient, url: str, body: Body, *, chunked: bool = False) -> httpx.Response:
    headers = {} if chunked else {"content-length": str(body.size)}
    return await client.post(url, content=body, headers=headers)


# H1: replies are looked up before their body is read ---------------------------------------------
async def test_a_reply_to_a_made_up_request_url_is_404_without_reading_it(client):
    body = Body(100, 64 * 1024)
    r = await post(client, MADE_UP, body)
    assert r.status_code == 404
    assert body.read == 0


async def test_a_reply_to_an_answered_request_url_is_404_without_reading_it(client):
    urls = await register(client, "answered")
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/relay/answered/")
        assert (await client.get(urls["first"])).status_code == 200
        ok = serialize_response(HttpResponse(200, [], b"ok"))
        assert (await client.post(urls["first"], content=ok)).status_code == 202
    again = Body(10)
    r = await post(client, urls["first"], again)
    assert r.status_code == 404 and again.read == 0


async def test_a_reply_over_the_limit_is_413_unread_and_its_requester_gets_502(make_app):
    _, client = await make_app(max_body_size=1000, max_pipeline=2)  # replies up to 2,000 bytes
    urls = await register(client, "toolarge")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/toolarge/")

        tg.start_soon(requester)
        assert (await client.get(urls["first"])).status_code == 200
        body = Body(5)
        r = await post(client, urls["first"], body)
        assert r.status_code == 413 and body.read == 0
    assert result["r"].status_code == 502


async def test_a_reply_that_cannot_be_held_now_is_503_and_may_be_posted_again(make_app):
    # The reply's bytes count against its name: a request of ~9 kB is held, a 15 kB reply would pass 20 kB.
    app, client = await make_app(max_queued_bytes_per_name=20_000, unavailable_timeout=5, reply_timeout=5)
    urls = await register(client, "held")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.post("/relay/held/", content=b"x" * 9000)

        tg.start_soon(requester)
        assert (await client.get(urls["first"])).status_code == 200
        big = Body(15)
        busy = await post(client, urls["first"], big)
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1 and big.read == 0
        small = serialize_response(HttpResponse(200, [], b"fits"))
        assert (await client.post(urls["first"], content=small)).status_code == 202
    assert result["r"].text == "fits"
    assert app.state.relay.held.held == 0


async def test_posts_to_request_urls_have_a_rate_limit_class(make_app):
    _, client = await make_app(rate_limit=("reply=2",), rate_limit_exempt=())
    statuses = [(await client.post(MADE_UP, content=b"x")).status_code for _ in range(3)]
    assert statuses == [404, 404, 429]


# H2: bytes held per name and per process ---------------------------------------------------------
async def test_a_body_over_the_limit_is_413_without_reading_it(make_app):
    _, client = await make_app(max_body_size=1000)
    await register(client, "limited")
    body = Body(20, 100)
    r = await post(client, "/relay/limited/", body)
    assert r.status_code == 413 and body.read == 0


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker | None]:
    """No broker of the test's own (the app's in-process one), or Redis (then Redis holds the queue)."""
    if request.param == "memory":
        yield None
        return
    from reversehub.core.broker.redis import RedisBroker

    redis = RedisBroker(f"{request.getfixturevalue('redis_url')}?prefix=bounds-{secrets.token_hex(4)}:")
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_bytes_held_for_a_name_are_bounded_refused_unread_and_given_back(broker, make_app):
    # Requests wait (no poller) for the whole unavailable timeout: three fit under the name's bound.
    bound = 3 * SIZE + 3000
    app, client = await make_app(broker=broker, max_queued_bytes_per_name=bound, unavailable_timeout=5, reply_timeout=5)
    held = app.state.relay.held
    await register(client, "big")
    await register(client, "other")
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(partial(client.post, f"/relay/big/{i}", content=b"x" * SIZE))
        await wait_for(lambda: held.held_for("big") > 3 * SIZE)

        refused = Body(SIZE // 1000)
        r = await post(client, "/relay/big/3", refused)
        assert r.status_code == 503 and r.text == "too many bytes queued for this name\n"
        assert int(r.headers["retry-after"]) >= 1 and refused.read == 0
        chunked = Body(10)  # no Content-Length: refused as soon as what arrived passes the bound
        r = await post(client, "/relay/big/4", chunked, chunked=True)
        assert r.status_code == 503 and chunked.read < 10
        one_too_large = Body(40)  # more than the bound on its own: it can never be held
        assert (await post(client, "/relay/other/", one_too_large)).status_code == 413
        assert one_too_large.read == 0

        tg.start_soon(partial(client.post, "/relay/other/", content=b"x" * SIZE))  # another name has its own bound
        await wait_for(lambda: held.held_for("other") > SIZE)
        tg.cancel_scope.cancel()  # the requesters go away
    assert held.held == 0
    broker = app.state.services.broker
    assert await broker.length("relay.q.big") == 0 and await broker.length("relay.q.other") == 0


async def test_bytes_held_by_the_process_are_bounded(make_app):
    app, client = await make_app(max_queued_bytes=2 * SIZE + 2000, unavailable_timeout=5, reply_timeout=5)
    held = app.state.relay.held
    for name in ("a", "b", "c"):
        await register(client, name)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/relay/a/", content=b"x" * SIZE))
        tg.start_soon(partial(client.post, "/relay/b/", content=b"x" * SIZE))
        await wait_for(lambda: held.held > 2 * SIZE)
        r = await client.post("/relay/c/", content=b"x" * SIZE)
        assert r.status_code == 503 and r.text == "too many bytes queued on this relay\n"
        assert "retry-after" in r.headers
        tg.cancel_scope.cancel()
    assert held.held == 0


async def test_a_relayed_request_gives_its_bytes_back_once_answered(client, app_client):
    app, _ = app_client
    urls = await register(client, "back")
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/relay/back/", content=b"x" * SIZE))
        r = await client.get(urls["first"])
        assert app.state.relay.held.held_for("back") > SIZE
        ok = serialize_response(HttpResponse(200, [], b"ok"))
        assert (await client.post(urls["first"], content=ok)).status_code == 202
    assert app.state.relay.held.held == 0
    assert links(r)["next"]


def test_the_bounds_on_held_bytes_are_serve_flags():
    from tests.test_security import parse_serve

    code, s, output = parse_serve(["--max-queued-bytes-per-name", "1000"], env={"REVERSEHUB_MAX_QUEUED_BYTES": "5000"})
    assert code == 0, output
    assert s is not None and (s.max_queued_bytes_per_name, s.max_queued_bytes) == (1000, 5000)
