"""Claims belong to a live worker; the outbox survives its database failing under it.

A worker (one per Outbox) has a heartbeat row; its claims are claimable by anyone as soon as its
heartbeat is stale, in the claim query itself. Outcomes are written only for rows the worker still
holds. Every database call of the outbox backs off and retries: none ends the app.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import anyio
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from hub import store
from tests.hub.conftest import SUB, hub_settings, subscribe
from tests.hub.peers import form
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/t"


async def publish(client, body=b"x", topic=TOPIC):
    r = await client.post(f"/publish?hub.topic={topic}", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 204


def _database_away() -> OperationalError:
    return OperationalError("SELECT ...", {}, Exception("database is away"))


def flaky(monkeypatch, name: str, failures: int) -> list[int]:
    """``store.<name>`` fails ``failures`` times as a database that went away would, then works."""
    real = getattr(store, name)
    calls = [0]

    async def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= failures:
            raise _database_away()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, name, call)
    return calls


@pytest.mark.parametrize("name", ["payloads", "claim", "record", "beat"])
async def test_a_database_error_in_the_outbox_is_retried_and_ends_nothing(make_hub, peer, monkeypatch, name, caplog):
    """Retried inside the outbox: its run neither ends nor has to be started again by its supervisor."""
    app, client = await make_hub()
    await subscribe(client, peer, TOPIC, SUB + "/cb")
    # As in a process other than the publisher's: its outbox claims the deliveries and loads their
    # payload itself (the publisher's own claims them in the publish, hub.store.claim_payload).
    monkeypatch.setattr(app.state.hub.outbox, "room", lambda: (0, []))
    calls = flaky(monkeypatch, name, 2)
    await publish(client, b"1")
    await wait_for(lambda: calls[0] > 2, timeout=20)
    await publish(client, b"2")
    await wait_for(lambda: [d.body for d in peer.to("/cb")][-2:] == [b"1", b"2"], timeout=20)
    assert (await client.get("/healthz")).status_code == 200
    assert "the hub's outbox failed" not in caplog.text


async def test_the_publishing_process_sends_what_its_publish_claimed(make_hub, peer, monkeypatch):
    """The publish's own transaction claims its deliveries for this process's outbox, which sends
    them at once: no claim query, no wake-up between the publisher's 2xx and the first delivery."""
    app, client = await make_hub()
    for i in range(3):
        await subscribe(client, peer, TOPIC, f"{SUB}/cb{i}")
    polled = []
    real = store.claim

    async def claim(*args, **kwargs):
        rows = await real(*args, **kwargs)
        polled.extend(rows)
        return rows

    monkeypatch.setattr(store, "claim", claim)
    await publish(client, b"handed")
    await wait_for(lambda: all([d.body for d in peer.to(f"/cb{i}")] == [b"handed"] for i in range(3)))
    assert polled == []
    await wait_for(lambda: _settled(app.state.hub.services.sessions))


async def _settled(sessions) -> bool:
    return await _rows(sessions, "SELECT state, claim_token FROM hub_deliveries") == [("delivered", None)] * 3


async def test_a_publish_claims_only_the_first_pending_delivery_of_each_subscription(database_url):
    """What the publish claims keeps each subscription's order: a subscription with an earlier
    delivery pending gets its new one claimed only after that one is settled."""
    from reversehub.core import db

    engine = db.create_engine(database_url)
    sessions = db.sessionmaker(engine)
    try:
        now = time.time()
        for name in ("a", "b", "c"):
            await store.activate(sessions, TOPIC, f"{SUB}/{name}", None, 600, now)
        async with store.writing(sessions) as s:
            first = await store.enqueue(s, TOPIC, "text/plain", b"1", now)
            taken = await store.claim_payload(s, first.payload_id, 2, 30.0, "w1")
        assert [c.callback for c in taken] == [f"{SUB}/a", f"{SUB}/b"]  # the limit, in order
        async with store.writing(sessions) as s:
            second = await store.enqueue(s, TOPIC, "text/plain", b"2", now)
            assert await store.claim_payload(s, second.payload_id, 10, 30.0, "w1") == []
        rest = await store.claim(sessions, 10, 30.0)
        assert [(c.callback, c.payload_id) for c in rest] == [(f"{SUB}/c", first.payload_id)]
        await store.record(
            sessions, [store.Outcome(c.id, c.subscription_id, c.token, "delivered", 204, None) for c in taken]
        )
        after = await store.claim(sessions, 10, 30.0)
        assert sorted((c.callback, c.payload_id) for c in after) == [
            (f"{SUB}/a", second.payload_id),
            (f"{SUB}/b", second.payload_id),
        ]
    finally:
        await engine.dispose()


async def _rows(sessions, sql: str) -> list[tuple]:
    async with sessions() as s:
        return [tuple(r) for r in await s.execute(text(sql))]


async def _silence(sessions, worker: str, seconds: float) -> None:
    """Set ``worker``'s last heartbeat ``seconds`` back, as if it had stopped beating then."""
    async with store.writing(sessions) as s:
        await s.execute(
            text("UPDATE hub_workers SET heartbeat_at = heartbeat_at - :s WHERE id = :w"), {"s": seconds, "w": worker}
        )


async def _queued(make_hub, peer, callbacks: int, **settings):
    """A hub whose own outbox is stopped (claims are made by hand) and one publish pending per callback."""
    app, client = await make_hub(**settings)
    for i in range(callbacks):
        await subscribe(client, peer, TOPIC, f"{SUB}/cb{i}")
    app.state.hub.outbox.close()
    await wait_for(lambda: _no_workers(app.state.hub.services.sessions))
    await publish(client)
    return app, client, app.state.hub.services.sessions


async def _no_workers(sessions) -> bool:
    return not await _rows(sessions, "SELECT id FROM hub_workers")


async def test_a_dead_workers_claims_are_taken_over_at_once_and_its_outcomes_are_not_written(make_hub, peer):
    app, client, sessions = await _queued(make_hub, peer, 3)
    node = store.workers.node()
    for worker in ("a", "b"):
        await store.beat(sessions, worker, node, 1)
    held = await store.claim(sessions, 10, 60, "a", 5.0)
    assert len(held) == 3
    assert await store.claim(sessions, 10, 60, "b", 5.0) == []  # a lives: its claims hold
    await _silence(sessions, "a", 6.0)
    taken = await store.claim(sessions, 10, 60, "b", 5.0)
    assert [c.id for c in taken] == [c.id for c in held] and {c.token for c in taken}.isdisjoint(c.token for c in held)
    # a comes back and reports what it sent: the rows are b's now, nothing of a's is written.
    await store.record(
        sessions, [store.Outcome(c.id, c.subscription_id, c.token, "delivered", 204, None) for c in held]
    )
    await store.release(sessions, [(c.id, c.token) for c in held])
    rows = await _rows(sessions, "SELECT state, claim_worker, attempts FROM hub_deliveries")
    assert rows == [("pending", "b", 0)] * 3
    await store.record(
        sessions, [store.Outcome(c.id, c.subscription_id, c.token, "delivered", 204, None) for c in taken]
    )
    assert (
        await _rows(sessions, "SELECT state, claim_worker, attempts FROM hub_deliveries")
        == [("delivered", None, 1)] * 3
    )
    # a's row goes once it holds no claim; b's stays.
    assert await store.dead(sessions, 5.0) == []
    assert await _rows(sessions, "SELECT id FROM hub_workers") == [("b",)]


def _delivered(c: store.Claimed) -> store.Outcome:
    return store.Outcome(c.id, c.subscription_id, c.token, "delivered", 204, None)


async def test_a_claim_nobody_renews_lapses_after_its_lease_a_renewed_one_holds(make_hub, peer):
    app, client, sessions = await _queued(make_hub, peer, 2)
    await store.beat(sessions, "a", store.workers.node(), 1)
    held = await store.claim(sessions, 10, 0.3, "a", 5.0)
    assert len(held) == 2
    await store.renew(sessions, [(held[0].id, held[0].token)], 60)
    await wait_for(lambda: _claimable(sessions, "b", [held[1].id]), timeout=10)


async def _claimable(sessions, worker, ids) -> bool:
    return [c.id for c in await store.claim(sessions, 10, 60, worker, 5.0)] == ids


async def test_a_restarted_process_takes_its_dead_predecessors_claims_at_start(make_hub, peer):
    """The predecessor's heartbeat is still fresh (stale only after 50 s here), but its process is
    gone: the new worker on the same node judges it dead at once."""
    app, client, sessions = await _queued(make_hub, peer, 2, outbox_heartbeat=10.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    await store.beat(sessions, "killed", store.workers.node(), int(dead.stdout))
    assert len(await store.claim(sessions, 10, 600, "killed", 50.0)) == 2
    await make_hub(outbox_heartbeat=10.0)
    await wait_for(lambda: len(peer.deliveries) == 2, timeout=20)
    assert sorted(d.path for d in peer.deliveries) == ["/cb0", "/cb1"]


async def test_survivors_log_a_dead_worker_once_and_deliver_its_claims(make_hub, peer, caplog):
    app, client, sessions = await _queued(make_hub, peer, 2)
    await store.beat(sessions, "gone-worker", "elsewhere", 4242)
    assert len(await store.claim(sessions, 10, 600, "gone-worker", 5.0)) == 2
    await _silence(sessions, "gone-worker", 60.0)
    caplog.set_level(logging.INFO, logger="hub.outbox")
    await make_hub(outbox_heartbeat=0.1)
    await wait_for(lambda: len(peer.deliveries) == 2, timeout=20)
    await wait_for(lambda: _no_such_worker(sessions, "gone-worker"), timeout=20)
    said = [r.getMessage() for r in caplog.records if "gone-worker" in r.getMessage()]
    assert len(said) == 1 and "taking over its 2 claimed deliveries" in said[0] and "http" not in said[0]


async def _no_such_worker(sessions, worker) -> bool:
    return not await _rows(sessions, f"SELECT id FROM hub_workers WHERE id = '{worker}'")


async def test_a_clean_shutdown_gives_claims_back_and_removes_its_worker(make_hub, peer):
    app, client = await make_hub()
    sessions = app.state.hub.services.sessions
    await wait_for(lambda: _rows_exist(sessions, "SELECT id FROM hub_workers"))
    ((worker,),) = await _rows(sessions, "SELECT id FROM hub_workers")
    assert worker == app.state.hub.outbox.worker
    app.state.hub.outbox.close()
    await wait_for(lambda: _no_workers(sessions))


async def _rows_exist(sessions, sql) -> bool:
    return bool(await _rows(sessions, sql))


async def test_outcomes_past_the_bound_lapse_and_are_sent_again(make_hub, peer, monkeypatch, caplog):
    app, client = await make_hub(delivery_claim_seconds=1.0)
    for i in range(4):
        await subscribe(client, peer, TOPIC, f"{SUB}/cb{i}")
    app.state.hub.outbox.max_unrecorded = 2
    calls = flaky(monkeypatch, "record", 6)
    await publish(client)
    await wait_for(lambda: calls[0] > 6, timeout=30)
    # Nothing is lost: those whose outcome was forgotten lapse and go again.
    await wait_for(lambda: _all_delivered(app.state.hub.services.sessions, 4), timeout=30)
    assert {d.path for d in peer.deliveries} == {f"/cb{i}" for i in range(4)}
    assert any("could not be recorded and are forgotten" in r.getMessage() for r in caplog.records)


async def _all_delivered(sessions, n) -> bool:
    return await _rows(sessions, "SELECT state FROM hub_deliveries") == [("delivered",)] * n


async def test_a_send_that_outlasts_the_lease_keeps_its_claim_while_its_worker_lives(make_app):
    """Two workers on one database; a callback slower than the lease: the worker sending it renews
    the lease, so the other never takes the row over (without renewal it would send it again)."""
    posts: list[float] = []

    async def slow_callback(request: Request) -> Response:
        if request.method == "GET":  # intent verification, or the topic's baseline fetch
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        posts.append(time.monotonic())
        await anyio.sleep(3.0)
        return Response(status_code=204)

    transport = httpx.ASGITransport(app=Starlette(routes=[Route("/{p:path}", slow_callback, methods=["GET", "POST"])]))
    fast = {"delivery_claim_seconds": 1.5, "outbox_heartbeat": 0.2, "delivery_timeout": 10.0}
    app, client = await make_app(transport=transport, **hub_settings(**fast))
    await make_app(transport=transport, **hub_settings(**fast))
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=SUB + "/slow"))
    assert r.status_code == 202
    await wait_for(lambda: _rows_exist(app.state.hub.services.sessions, "SELECT id FROM hub_subscriptions"))
    await publish(client)
    await wait_for(lambda: _all_delivered(app.state.hub.services.sessions, 1), timeout=20)
    assert len(posts) == 1


async def test_a_killed_sibling_on_the_same_node_is_judged_at_once_without_a_restart(make_hub, peer):
    """A worker of this node holds claims; its process is killed while its heartbeat is still fresh
    (stale only after 15 s here): the running worker takes them over at its next heartbeat."""
    app, client, sessions = await _queued(make_hub, peer, 2, outbox_heartbeat=3.0)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        await store.beat(sessions, "sibling", store.workers.node(), sibling.pid)
        assert len(await store.claim(sessions, 10, 600, "sibling", 15.0)) == 2
        app2, _ = await make_hub(outbox_heartbeat=3.0)
        worker = app2.state.hub.outbox.worker
        await wait_for(lambda: _rows_exist(sessions, f"SELECT id FROM hub_workers WHERE id = '{worker}'"))
        assert peer.deliveries == []  # the sibling lives: its claims hold
        sibling.kill()
        sibling.wait()
        await wait_for(lambda: len(peer.deliveries) == 2, timeout=10)
    finally:
        sibling.kill()
        sibling.wait()


async def test_claims_a_saturated_host_cannot_take_are_given_back_and_sent_later(make_hub, peer, monkeypatch):
    app, client = await make_hub()
    outbox = app.state.hub.outbox
    deferred: list[int] = []
    release = store.release

    async def counted(sessions, held, until=None):
        if until is not None:
            deferred.extend(i for i, _ in held)
        await release(sessions, held, until)

    monkeypatch.setattr(store, "release", counted)
    for i in range(5):
        await subscribe(client, peer, TOPIC, f"{SUB}/cb{i}")
    outbox.host_backlog, outbox.max_queued = 1, 0  # one delivery to the host at a time, none waits here
    await publish(client)
    await wait_for(lambda: _all_delivered(app.state.hub.services.sessions, 5), timeout=20)
    assert sorted(d.path for d in peer.deliveries) == [f"/cb{i}" for i in range(5)]
    assert deferred and not outbox._held
