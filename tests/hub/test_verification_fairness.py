"""Intent verification shared fairly between callback hosts and clients: a host that takes the GET
and never answers holds only its own slots, a client with many such hosts only its own share, and
only their own queues fill up (issue 13 M2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import func, select

from hub.fairness import HostSlots
from hub.models import Subscription, SubscriptionState
from reversehub.core.outbound import Response
from tests.hub.conftest import hub_settings
from tests.hub.peers import form
from tests.support import wait_for
from tests.test_security import client_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/t"


class Tarpit:
    """Verification GETs to ``tarpit*`` hosts hang until released; every other one echoes at once."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.hanging = 0
        self.echoed: list[str] = []

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, **_: Any) -> Response:
        parsed = httpx.URL(url)
        challenge = parsed.params.get("hub.challenge")
        if challenge is None:
            return Response(200, [(b"content-type", b"text/plain")], b"")
        if parsed.host.startswith("tarpit"):
            self.hanging += 1
            await self.release.wait()
        else:
            self.echoed.append(parsed.path)
        return Response(200, [], challenge.encode())

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        return 204


async def test_a_tarpit_host_does_not_hold_up_other_hosts(make_app):
    fake = Tarpit()
    app, client = await make_app(
        # One client asks for all: its own share (tested below) must not be what holds the others up.
        outbound=fake,
        **hub_settings(verify_concurrency=8, verify_per_host=2, verify_waiting_per_host=50, verify_per_client=100),
    )
    for i in range(50):
        r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=f"http://tarpit.test/{i}"))
        assert r.status_code == 202
    # The tarpit's queue is full: its next subscribe is refused, nobody else's is.
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback="http://tarpit.test/late"))
    assert r.status_code == 503 and "callback host" in r.text
    await wait_for(lambda: fake.hanging == 2)  # its own two slots, not the eight global ones

    for i in range(10):
        r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=f"http://fine{i}.test/cb"))
        assert r.status_code == 202
    await wait_for(lambda: len(fake.echoed) == 10, timeout=5)
    assert fake.hanging == 2
    fake.release.set()
    await wait_for(lambda: fake.hanging == 50, timeout=5)


async def test_one_client_with_many_tarpits_holds_only_its_share(make_app):
    fake = Tarpit()
    app, client = await make_app(
        outbound=fake,
        **hub_settings(verify_concurrency=8, verify_per_host=2, verify_per_client=3, verify_waiting_per_client=20),
    )
    async with client_for(app, ("198.51.100.66", 4000)) as attacker:
        for i in range(20):
            callback = f"http://tarpit{i % 5}.test/{i}"
            r = await attacker.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=callback))
            assert r.status_code == 202
        r = await attacker.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback="http://tarpit9.test/"))
        assert r.status_code == 503 and "client" in r.text
    await wait_for(lambda: fake.hanging == 3)  # its share, though five hosts would give it ten
    async with client_for(app, ("203.0.113.7", 4000)) as other:
        for i in range(5):
            r = await other.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=f"http://ok{i}.test/cb"))
            assert r.status_code == 202
    await wait_for(lambda: len(fake.echoed) == 5, timeout=5)
    assert fake.hanging == 3
    fake.release.set()
    await wait_for(lambda: fake.hanging == 20, timeout=5)


async def test_host_slots_are_dropped_when_idle():
    slots = HostSlots(1)
    async with slots.hold("a"):
        assert slots.load("a") == 1
    assert slots.load("a") == 0 and not slots._hosts


async def test_one_client_subscribes_2000_callbacks_on_one_host_by_honouring_retry_after(make_app):
    """The docs promise 1,000 verifications waiting per callback host: past that a subscribe gets
    503 with Retry-After, and a client that asks again then has all its subscriptions (issue 18)."""
    fake = Tarpit()  # every callback on one host, which holds its GETs until released
    app, client = await make_app(outbound=fake, **hub_settings())
    refused = []
    for i in range(2000):
        callback = f"http://tarpit.test/cb/{i}"
        r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=callback))
        if r.status_code == 503:
            assert "callback host" in r.text and r.headers["retry-after"] == "1"
            refused.append(callback)
        else:
            assert r.status_code == 202, r.text
    assert len(refused) == 1000  # exactly the documented bound of waiting verifications per host
    fake.release.set()
    verifier = app.state.hub.verifier
    while refused:
        await wait_for(lambda: verifier.waiting < 1000, timeout=30)  # what Retry-After stands for
        r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=refused[-1]))
        if r.status_code == 202:
            refused.pop()
        else:
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
    await wait_for(lambda: verifier.waiting == 0, timeout=30)
    assert fake.hanging == 2000
    async with app.state.hub.services.sessions() as s:
        active = (
            await s.execute(
                select(func.count()).where(Subscription.topic == TOPIC, Subscription.state == SubscriptionState.ACTIVE)
            )
        ).scalar_one()
    assert active == 2000
