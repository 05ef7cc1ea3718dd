"""A client's share of a callback host's cap (issue 13, M1): one client cannot fill the cap of a
host that others use too (a shared webhook host, a relay elsewhere) and hold it for the lease."""

from __future__ import annotations

import pytest

from tests.hub.conftest import SUB, subscribe
from tests.hub.peers import form
from tests.support import wait_for
from tests.test_security import client_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/feed"
OTHER = ("198.51.100.9", 1234)


async def test_one_client_asks_for_only_its_share_of_a_callback_hosts_subscriptions(make_hub, peer):
    app, client = await make_hub(max_subscriptions_per_callback_host_per_client=2)
    await subscribe(client, peer, TOPIC, SUB + "/1")
    await subscribe(client, peer, TOPIC, SUB + "/2")
    await subscribe(client, peer, TOPIC, SUB + "/2")  # a renewal is not one more
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=SUB + "/3"))
    assert r.status_code == 202
    await wait_for(lambda: bool(peer.verified("/3", "denied")))
    assert (
        peer.verified("/3", "denied")[0]["hub.reason"]
        == "too many subscriptions for this callback host from this client"
    )
    async with client_for(app, OTHER) as other:
        await subscribe(other, peer, TOPIC, SUB + "/4")


async def test_exempt_clients_hold_no_share(make_hub, peer):
    app, _ = await make_hub(max_subscriptions_per_callback_host_per_client=1)
    async with client_for(app, ("127.0.0.1", 5555)) as local:
        for i in range(3):
            await subscribe(local, peer, TOPIC, f"{SUB}/local{i}")
