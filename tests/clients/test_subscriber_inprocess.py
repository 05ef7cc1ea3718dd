"""Subscriber and Endpoint against the real app in-process (httpx.ASGITransport, no sockets)."""

from __future__ import annotations

import httpx
import pytest

from clients import AsyncPublisher, Endpoint, Subscriber, Update
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
    sub = Subscriber(topic, on_update, hub=f"{PUBLIC}/hub", transport=transport, backoff=(0.01, 0.1))
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
