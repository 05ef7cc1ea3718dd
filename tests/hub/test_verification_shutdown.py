"""Shutting down while verifications are in flight (hub.subscriptions.Verifier, hub.activations).

A callback that echoed the challenge with a 2xx counts itself subscribed (WebSub 5.3.1) and hears
nothing more, so the hub must store that subscription even if it is stopping: the step from the
echo to the commit is drained by a graceful shutdown and shielded from cancellation. Verifications
whose GET has not gone out are abandoned (nothing changes, 5.1; the subscriber asks again).

The commit is held at ``store.activate_many`` (the one write every activation goes through), so each
test decides exactly when the shutdown begins relative to it: no sleeps, no timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from hub import store
from hub.errors import Busy
from hub.netguard import NetGuard
from hub.subscriptions import SubscriptionRequest, Verifier
from reversehub.core import db
from reversehub.core.broker.memory import MemoryBroker
from reversehub.core.outbound import HttpxOutbound, same_origin
from reversehub.core.services import Services
from reversehub.core.settings import Settings
from reversehub.server.app import create_app
from tests.conftest import started
from tests.hub.conftest import SUB, hub_settings
from tests.hub.peers import form
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/topic"


class HeldCommit:
    """Holds every activation write until ``release`` is set; ``reached`` is set when one arrives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = anyio.Event()
        self.release = anyio.Event()
        real = store.activate_many

        async def held(sessions, items):
            self.reached.set()
            await self.release.wait()
            return await real(sessions, items)

        monkeypatch.setattr(store, "activate_many", held)


@asynccontextmanager
async def verifier_for(
    settings: Settings, baseline: Callable[[str], Awaitable[None]] | None = None
) -> AsyncIterator[tuple[Verifier, list[str]]]:
    """A Verifier whose callbacks all echo the challenge; yields it and the paths it asked."""
    asked: list[str] = []

    async def echo(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, text=request.url.params["hub.challenge"])

    engine = db.create_engine(settings.database_url)
    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as http:
            is_own = same_origin(settings.public_origin)
            outbound = HttpxOutbound(http)
            services = Services(
                settings, engine, db.sessionmaker(engine), MemoryBroker(), outbound, CollectorRegistry(), is_own
            )
            yield Verifier(services, NetGuard(settings, is_own), baseline=baseline), asked
    finally:
        await engine.dispose()


async def stored(database_url: str, topic: str, callback: str):
    engine = db.create_engine(database_url)
    try:
        return await store.find(db.sessionmaker(engine), topic, callback)
    finally:
        await engine.dispose()


async def test_a_graceful_shutdown_commits_a_verification_echoed_just_before_it(settings, peer, monkeypatch):
    commit = HeldCommit(monkeypatch)
    app = create_app(replace(settings, **hub_settings()), transport=httpx.ASGITransport(app=peer.app))

    async def release_once_the_shutdown_began() -> None:
        await wait_for(lambda: app.state.services is None)  # the lifespan's shutdown has started
        commit.release.set()

    async with anyio.create_task_group() as tg:
        async with started(app) as client:
            r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=SUB + "/cb"))
            assert r.status_code == 202
            await commit.reached.wait()  # the callback echoed the challenge; the hub is storing it
            tg.start_soon(release_once_the_shutdown_began)
        # Leaving started(): the lifespan's shutdown, hub.aclose() then cancellation, as a SIGTERM does.

    assert len(peer.verified("/cb")) == 1
    sub = await stored(settings.database_url, TOPIC, SUB + "/cb")
    assert sub is not None and sub.state == "active"


async def test_cancelling_the_hub_mid_commit_still_commits(settings, monkeypatch):
    """No drain at all (a task group cancelled): the commit is shielded and the batch writer flushes."""
    commit = HeldCommit(monkeypatch)
    outcome: list[bool] = []
    async with verifier_for(settings) as (verifier, asked):

        async def verify() -> None:
            outcome.append(await verifier.verify(SubscriptionRequest("subscribe", TOPIC, SUB + "/a")))

        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run)
            tg.start_soon(verify)
            await commit.reached.wait()
            tg.cancel_scope.cancel()
            commit.release.set()  # after the cancellation was delivered
    assert asked == ["/a"] and outcome == [True]
    sub = await stored(settings.database_url, TOPIC, SUB + "/a")
    assert sub is not None and sub.state == "active"


async def test_a_closing_hub_abandons_unasked_verifications_and_refuses_new_ones(settings):
    baseline_reached = anyio.Event()

    async def baseline(topic: str) -> None:  # the topic fetch before a first subscription's GET
        baseline_reached.set()
        await anyio.sleep_forever()

    async with verifier_for(settings, baseline) as (verifier, asked):
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run)
            verifier.submit(SubscriptionRequest("subscribe", TOPIC, SUB + "/early"))
            await baseline_reached.wait()
            with anyio.fail_after(5):
                await verifier.aclose()
            with pytest.raises(Busy):
                verifier.submit(SubscriptionRequest("subscribe", TOPIC, SUB + "/late"))
            await wait_for(lambda: verifier.waiting == 0)
            tg.cancel_scope.cancel()
    assert asked == []  # no GET went out: nobody was told anything
    assert await stored(settings.database_url, TOPIC, SUB + "/early") is None
