"""The hub's outbound HTTP goes through the one seam it is given (reversehub.core.outbound):
a fake injected at create_app sees the verification GET, the topic's baseline fetch and the
delivery POST, with what the spec puts in them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from reversehub.core.outbound import Response
from tests.hub.conftest import SUB, hub_settings, subscribe
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/t"


class Fake:
    """Answers verification GETs with their challenge and any other GET with an empty text/plain
    topic; records everything, and answers deliveries with ``post_status``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Mapping[str, str] | None]] = []
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.post_status = 204

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, **_: Any) -> Response:
        self.requests.append((method, url, headers))
        challenge = httpx.URL(url).params.get("hub.challenge")
        if challenge is not None:
            return Response(200, [], challenge.encode())
        return Response(200, [(b"content-type", b"text/plain")], b"")

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        self.posts.append((url, headers, body))
        return self.post_status


async def test_verification_fetch_and_delivery_go_through_the_injected_outbound(make_app):
    fake = Fake()
    app, client = await make_app(outbound=fake, **hub_settings())
    await subscribe(client, None, TOPIC, SUB + "/cb")
    asked = [httpx.URL(url) for method, url, _ in fake.requests if method == "GET" and url.startswith(SUB)]
    assert [(u.path, u.params["hub.mode"], u.params["hub.topic"]) for u in asked] == [("/cb", "subscribe", TOPIC)]
    assert any(url == TOPIC for _, url, _ in fake.requests)  # the topic's baseline

    r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"news", headers={"Content-Type": "text/plain"})
    assert r.status_code == 204
    await wait_for(lambda: bool(fake.posts))
    [(url, headers, body)] = fake.posts
    assert (url, body, headers["Content-Type"], headers["X-Hub-Sequence"]) == (SUB + "/cb", b"news", "text/plain", "1")
    assert f'<{TOPIC}>; rel="self"' in headers["Link"]


async def test_a_410_from_the_injected_outbound_ends_the_subscription(make_app):
    from hub import store

    fake = Fake()
    fake.post_status = 410
    app, client = await make_app(outbound=fake, **hub_settings())
    await subscribe(client, None, TOPIC, SUB + "/cb")
    await client.post(f"/publish?hub.topic={TOPIC}", content=b"news", headers={"Content-Type": "text/plain"})

    async def ended() -> bool:
        sub = await store.find(app.state.hub.services.sessions, TOPIC, SUB + "/cb")
        return sub is not None and sub.state != "active"

    await wait_for(ended)
