from __future__ import annotations

import dataclasses

import httpx
import pytest

from reversehub.core.settings import Settings
from tests.hub.peers import Peer, form
from tests.support import wait_for

SUB = "http://sub.test"
PUB = "http://pub.test"


@pytest.fixture
def peer() -> Peer:
    return Peer()


# Hub tests are about the hub: publishing from the test client's address is trusted, and request
# rate limits (the middleware and the handlers' budgets, reversehub.core.limits) are off.
OPEN = {"trusted_networks": ("0.0.0.0/0", "::/0"), "rate_limit_window": 0.0}


def hub_settings(**overrides):
    fields = {f.name for f in dataclasses.fields(Settings)}
    values = {k: v for k, v in OPEN.items() if k in fields}
    values.update(delivery_retry_base=0.01, outbox_scan_interval=0.05)
    values.update(overrides)
    return values


@pytest.fixture
def make_hub(make_app, peer):
    """``app, client = await make_hub(**settings)``: a hub whose outbound HTTP reaches ``peer``."""

    async def factory(**overrides):
        return await make_app(transport=httpx.ASGITransport(app=peer.app), **hub_settings(**overrides))

    return factory


@pytest.fixture
async def hub(make_hub):
    return await make_hub()


async def subscribe(client, peer, topic, callback, **extra):
    """Subscribe and wait until the hub verified and stored it."""
    r = await client.post("/hub", data=form(mode="subscribe", topic=topic, callback=callback, **extra))
    assert r.status_code == 202, r.text
    app = client._transport.app
    from hub import store

    async def active():
        sub = await store.find(app.state.hub.services.sessions, topic, callback)
        return sub is not None and sub.state == "active" and sub.verified_at >= started

    import time

    started = time.time() - 0.001
    await wait_for(active)
