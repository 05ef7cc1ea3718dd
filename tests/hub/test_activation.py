"""Verified subscriptions written in batches (hub.store.activate_many, hub.activations): each item
keeps the rules a single activation has; and the verification GET (hub.challenge)."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest
from sqlalchemy import select

from hub import store
from hub.activations import Activations
from hub.challenge import Unanswered, ask, with_params
from hub.models import Delivery, Subscription
from reversehub.core import db
from reversehub.core.outbound import HttpxOutbound, OwnRelay, same_origin
from tests.hub.conftest import SUB, subscribe
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/topic"


@pytest.fixture
async def sessions(database_url):
    engine = db.create_engine(database_url)
    yield db.sessionmaker(engine)
    await engine.dispose()


async def publish(sessions, body: bytes, at: float) -> int:
    async with store.writing(sessions) as s:
        return (await store.enqueue(s, TOPIC, "text/plain", body, at)).payload_id


async def rows(sessions):
    async with sessions() as s:
        subs = {sub.callback: sub for sub in (await s.execute(select(Subscription))).scalars()}
        deliveries = (await s.execute(select(Delivery).order_by(Delivery.id))).scalars().all()
    return subs, [(d.subscription_id, d.payload_id, d.seq) for d in deliveries]


async def test_a_batch_keeps_every_rule_of_single_activations(sessions):
    t0 = time.time()
    A, B, C, D = (f"{SUB}/{name}" for name in "abcd")
    await store.activate(sessions, TOPIC, A, "a-old", 100, t0 - 50)  # active throughout
    await store.activate(sessions, TOPIC, B, "b-old", 10, t0 - 1000)  # lease ran out long ago
    before = await publish(sessions, b"before the verifications went out", t0 - 5)
    after = await publish(sessions, b"after", t0 + 1)  # A gets this one from the publish itself

    results = await store.activate_many(
        sessions,
        [
            store.Activation(TOPIC, A, "a-new", 200, t0 + 2, since=t0),  # renewal: no catch-up
            store.Activation(TOPIC, B, "b-new", 300, t0 + 2, since=t0),  # was not active: catches up
            store.Activation(TOPIC, C, "c-first", 400, t0 + 2, since=t0),  # new: catches up
            store.Activation(TOPIC, C, "c-second", 500, t0 + 3, since=t0),  # again: now a renewal
            store.Activation("http://pub.test/other", D, None, 600, t0 + 2),  # no since: nothing to catch
        ],
    )

    subs, deliveries = await rows(sessions)
    a, b, c, d = (subs[x] for x in (A, B, C, D))
    assert results == [(a.id, 0), (b.id, 1), (c.id, 1), (c.id, 0), (d.id, 0)]
    assert (a.secret, a.lease_seconds, a.expires_at) == ("a-new", 200, pytest.approx(t0 + 202))
    assert (b.secret, b.state, b.expires_at) == ("b-new", "active", pytest.approx(t0 + 302))
    assert (c.secret, c.lease_seconds, c.expires_at) == ("c-second", 500, pytest.approx(t0 + 503))
    assert d.topic == "http://pub.test/other" and d.callback_host == "sub.test"
    # Only the payload published since the verification went out, once each, numbered on.
    assert sorted(deliveries) == sorted([(a.id, before, 1), (a.id, after, 2), (b.id, after, 1), (c.id, after, 1)])
    assert (a.seq, b.seq, c.seq, d.seq) == (2, 1, 1, 0)


async def test_activations_waiting_together_are_written_together_and_one_bad_one_fails_alone(sessions, caplog):
    activations = Activations(sessions)
    t0 = time.time()
    outcomes: dict[str, object] = {}

    async def activate(callback: str, lease: int) -> None:
        try:
            outcomes[callback] = await activations.activate(store.Activation(TOPIC, callback, None, lease, t0))
        except Exception as exc:
            outcomes[callback] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(activations.run)
        await anyio.sleep(0)
        async with anyio.create_task_group() as waiting:
            for i in range(20):
                # 2**70 seconds fits no INTEGER column (SQLite nor PostgreSQL): that item fails.
                waiting.start_soon(activate, f"{SUB}/{i}", 2**70 if i == 7 else 60)
        tg.cancel_scope.cancel()

    assert "a batch of 20 activations failed" in caplog.text  # all 20 in one transaction, at first
    assert isinstance(outcomes.pop(f"{SUB}/7"), Exception)
    subs, _ = await rows(sessions)
    assert sorted(subs) == sorted(outcomes)
    assert all(outcomes[cb] == (sub.id, 0) and sub.expires_at == pytest.approx(t0 + 60) for cb, sub in subs.items())


async def test_the_writer_writes_what_it_holds_when_cancelled(sessions, monkeypatch):
    """Each item is a callback that echoed its challenge: cancelling the writer must not drop it."""
    writing, release = anyio.Event(), anyio.Event()
    real = store.activate_many

    async def held(sessions, items):
        writing.set()
        await release.wait()
        return await real(sessions, items)

    monkeypatch.setattr(store, "activate_many", held)
    activations = Activations(sessions)
    t0 = time.time()
    outcomes: dict[str, object] = {}

    async def activate(callback: str) -> None:
        try:
            outcomes[callback] = await activations.activate(store.Activation(TOPIC, callback, None, 60, t0))
        except BaseException as exc:  # noqa: B036 (a cancelled future is what this test catches)
            outcomes[callback] = exc
            raise

    first, second = f"{SUB}/first", f"{SUB}/second"
    async with anyio.create_task_group() as callers:
        async with anyio.create_task_group() as writer:
            writer.start_soon(activations.run)
            await wait_for(lambda: activations._running)  # activations now go through the writer
            callers.start_soon(activate, first)
            await writing.wait()  # the first is being written...
            callers.start_soon(activate, second)
            await wait_for(lambda: len(activations._waiting) == 1)  # ...and the second waits its turn
            writer.cancel_scope.cancel()
            release.set()  # after the cancellation was delivered

    subs, _ = await rows(sessions)
    assert outcomes == {first: (subs[first].id, 0), second: (subs[second].id, 0)}


async def test_many_subscribers_verified_at_once_each_get_the_next_publish_once(hub, peer):
    app, client = hub
    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(subscribe, client, peer, TOPIC, f"{SUB}/cb/{i}")
    r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 204
    await wait_for(lambda: len(peer.deliveries) == 40)
    assert sorted(d.path for d in peer.deliveries) == sorted(f"/cb/{i}" for i in range(40))
    assert {d.headers["x-hub-sequence"] for d in peer.deliveries} == {"1"}


def test_the_challenge_is_added_to_the_callbacks_own_query_as_written():
    params = {"hub.mode": "subscribe", "hub.topic": "http://pub.test/t?a=1 b", "hub.challenge": "c-_"}
    assert with_params("http://sub.test/cb", params) == str(httpx.URL("http://sub.test/cb").copy_merge_params(params))
    assert with_params("http://sub.test/cb?x=a%20b", params).startswith(
        "http://sub.test/cb?x=a%20b&hub.mode=subscribe&"
    )
    replaced = httpx.URL(with_params("http://sub.test/cb?hub.mode=evil&y=1", params)).params
    assert replaced.get_list("hub.mode") == ["subscribe"] and replaced["y"] == "1"


async def own_app(scope, receive, send):
    """Our own origin's app, as far as these tests need one."""
    path = scope["path"]
    if path == "/raises":
        raise RuntimeError("boom")
    if path == "/silent":
        return
    if path == "/slow":
        await anyio.sleep(10)
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"0123", "more_body": True})
    await send({"type": "http.response.body", "body": b"456789"})


@pytest.mark.parametrize("own", [True, False])
async def test_the_verification_get_keeps_no_more_than_it_needs(own):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=own_app)) as http:
        outbound = OwnRelay(own_app, same_origin("http://hub.test"), HttpxOutbound(http))
        origin = "http://hub.test" if own else "http://sub.test"
        assert await ask(outbound, f"{origin}/cb?q=1", 5, 5) == (201, b"01234")
        assert await ask(outbound, f"{origin}/cb", 5, 50) == (201, b"0123456789")


async def test_our_own_app_failing_to_answer_is_no_verification():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=own_app)) as http:
        outbound = OwnRelay(own_app, same_origin("http://hub.test"), HttpxOutbound(http))
        for path, timeout in [("/raises", 5.0), ("/silent", 5.0), ("/slow", 0.05)]:
            with pytest.raises(Unanswered):
                await ask(outbound, f"http://hub.test{path}", timeout, 10)
