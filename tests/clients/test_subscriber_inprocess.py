"""Subscriber and Endpoint against the real app in-process (httpx.ASGITransport, no sockets)."""

from __future__ import annotations

import httpx
import pytest

from clients import AsyncPublisher, AsyncSubscriber, Endpoint, SubscriptionError, Update
from hub import store
from relay.wire import HttpRequest, HttpResponse
from tests.conftest import PUBLIC, MakeApp
from tests.support import wait_for

pytestmark = pytest.mark.anyio


async def test_subscribe_publish_stop_in_process(make_app: MakeApp) -> None:
    app, _ = await make_app()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
    received: list[Update] = []

    async def on_update(update: Update) -> None:
        received.append(update)

    topic = f"{PUBLIC}/topics/inprocess"
    sub = AsyncSubscriber(topic, on_update, hub=f"{PUBLIC}/hub", transport=transport, backoff=(0.01, 0.1))
    await sub.start()
    assert sub.state == "subscribed" and sub.callback_url is not None
    assert sub.callback_url.startswith(f"{PUBLIC}/relay/sub-")
    async with AsyncPublisher(f"{PUBLIC}/hub", transport=transport) as publisher:
        await publisher.publish(topic, b'{"n": 1}', "application/json")
    await wait_for(lambda: len(received) == 1)
    assert received[0].json() == {"n": 1} and received[0].topic == topic
    await sub.stop()
    assert sub.state == "stopped"


async def test_endpoint_in_process(make_app: MakeApp) -> None:
    app, client = await make_app()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))

    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("content-type", "text/plain")], f"{request.method} {request.target}".encode())

    async with Endpoint(f"{PUBLIC}/reversehttp", handler, name="inproc", transport=transport) as endpoint:
        assert endpoint.public_url == f"{PUBLIC}/relay/inproc/"
        r = await client.get("/relay/inproc/x?y=1")
        assert (r.status_code, r.text) == (200, "GET /relay/inproc/x?y=1")


async def test_a_handler_answering_head_as_get_is_relayed_without_the_body(make_app: MakeApp) -> None:
    """A handler that gives HEAD the body GET would get (BaseHTTPRequestHandler-style): the reply is
    posted without it (the relay refuses a HEAD reply with a body), with the Content-Length GET gets."""
    app, client = await make_app()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))

    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("content-type", "text/plain")], b"the whole page")

    async with Endpoint(f"{PUBLIC}/reversehttp", handler, name="head", transport=transport):
        r = await client.head("/relay/head/x")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "14")


class RefusedEchoes(httpx.AsyncBaseTransport):
    """The app, except that replies to the relay (``message/http`` POSTs) carrying a 200 get
    ``status`` and never reach it (or, with ``status`` None, fail to connect), ``times`` times: a
    relay that refuses the subscriber's echo of the hub's challenge, or is away for a moment."""

    def __init__(self, inner: httpx.AsyncBaseTransport, status: int | None = 400, times: int = 1_000_000) -> None:
        self.inner = inner
        self.status = status
        self.times = times
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.headers.get("content-type") == "message/http":
            if (await request.aread()).startswith(b"HTTP/1.1 200") and self.refused < self.times:
                self.refused += 1
                if self.status is None:
                    raise httpx.ConnectError("connection refused", request=request)
                return httpx.Response(self.status, text="reply refused\n")
        return await self.inner.handle_async_request(request)


async def test_an_echo_the_relay_refused_is_no_subscription(make_app: MakeApp) -> None:
    app, _ = await make_app()
    transport = RefusedEchoes(httpx.ASGITransport(app=app, client=("127.0.0.1", 4000)))
    states: list[str] = []
    topic = f"{PUBLIC}/topics/refused"
    sub = AsyncSubscriber(topic, lambda update: None, hub=f"{PUBLIC}/hub", transport=transport, on_state=states.append)
    try:
        with pytest.raises(SubscriptionError, match="relay did not take our answer"):
            await sub.start()
    finally:
        await sub.stop()
    assert transport.refused == 1 and "subscribed" not in states
    assert await store.find(app.state.services.sessions, topic, sub.callback_url or "") is None


async def test_endpoint_reports_whether_the_relay_took_each_reply(make_app: MakeApp) -> None:
    app, client = await make_app(reply_timeout=0.2)
    transport = RefusedEchoes(httpx.ASGITransport(app=app, client=("127.0.0.1", 4000)))
    replied: list[tuple[str, bool]] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        status = 200 if request.target.endswith("/ok") else 204
        return HttpResponse(status, [], b"")

    def on_replied(request: HttpRequest, accepted: bool) -> None:
        replied.append((request.target, accepted))

    async with Endpoint(f"{PUBLIC}/reversehttp", handler, name="acks", transport=transport, on_replied=on_replied):
        assert (await client.get("/relay/acks/fine")).status_code == 204
        await wait_for(lambda: len(replied) == 1)
        assert (await client.get("/relay/acks/ok")).status_code == 504  # the relay never got the reply
    assert replied == [("/relay/acks/fine", True), ("/relay/acks/ok", False)]


@pytest.mark.parametrize("status", [None, 502, 503])
async def test_a_reply_the_relay_could_not_take_for_a_moment_is_posted_again(make_app: MakeApp, status) -> None:
    """A reply that met a dead process or an unavailable relay is posted again: the delivery stays
    bound to its request URL, and the requester gets the application's answer, not a 504."""
    app, client = await make_app()
    transport = RefusedEchoes(httpx.ASGITransport(app=app, client=("127.0.0.1", 4000)), status=status, times=2)
    replied: list[bool] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("content-type", "text/plain")], b"answered")

    def on_replied(_request: HttpRequest, accepted: bool) -> None:
        replied.append(accepted)

    async with Endpoint(f"{PUBLIC}/reversehttp", handler, name="again", transport=transport, on_replied=on_replied):
        r = await client.get("/relay/again/x")
    assert (r.status_code, r.text) == (200, "answered")
    assert transport.refused == 2 and replied == [True]
