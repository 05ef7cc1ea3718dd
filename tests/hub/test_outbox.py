"""Delivery: retries, giving up, 410, order, status and replay, relay.online, crash recovery."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select, update

from hub import store
from hub.fairness import Slots, netloc
from hub.models import Delivery
from hub.netguard import NetGuard
from hub.signing import ownership_proof
from reversehub.core.backoff import backoff
from reversehub.core.settings import Settings
from tests.hub.conftest import SUB, subscribe
from tests.hub.proofs import fresh_timestamp
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/t"


async def publish(client, body=b"x", topic=TOPIC):
    r = await client.post(f"/publish?hub.topic={topic}", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 204


async def deliveries(app):
    async with app.state.hub.services.sessions() as s:
        return list((await s.execute(select(Delivery).order_by(Delivery.id))).scalars())


def test_backoff_grows_with_jitter_and_the_first_retry_is_within_2s():
    firsts = [backoff(1, 1.0, 3600) for _ in range(200)]
    assert all(0.5 <= f <= 1.0 for f in firsts) and len(set(firsts)) > 1
    assert 4 <= backoff(4, 1.0, 3600) <= 8
    assert backoff(40, 1.0, 3600) <= 3600


async def test_slots_bound_holders_and_serve_waiters_in_order():
    slots, running, order = Slots(2), [0], []
    peak = [0]
    release = asyncio.Event()

    async def hold(i: int) -> None:
        async with slots:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            order.append(i)
            await release.wait()
            running[0] -= 1

    tasks = [asyncio.create_task(hold(i)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert order == [0, 1] and running[0] == 2
    release.set()
    await asyncio.gather(*tasks)
    assert order == list(range(6)) and peak[0] == 2


async def test_slots_survive_cancelled_waiters():
    slots = Slots(1)
    got = []

    async def take(i: int) -> None:
        async with slots:
            got.append(i)

    async with slots:
        waiting = asyncio.create_task(take(1))  # cancelled while waiting: gives up its place
        handed = asyncio.create_task(take(2))  # cancelled after the slot was handed to it: passes it on
        last = asyncio.create_task(take(3))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0)
    handed.cancel()  # the exit above handed the slot to 2, which has not run yet
    await asyncio.gather(waiting, handed, last, return_exceptions=True)
    assert got == [3] and waiting.cancelled() and handed.cancelled()
    async with slots:  # and the slot is free again
        got.append(4)
    assert got == [3, 4]


async def test_slots_release_passing_over_a_cancelled_waiter_before_it_runs():
    # The holder leaves after a waiter was cancelled but before that waiter ran: the release skips
    # the cancelled future (taking it off the queue), and the waiter's own cleanup must not fail.
    slots = Slots(1)
    got = []

    async def take(i: int) -> None:
        async with slots:
            got.append(i)

    holder_done = asyncio.Event()

    async def holder() -> None:
        async with slots:
            await holder_done.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(take(1))
    last = asyncio.create_task(take(2))
    await asyncio.sleep(0.01)
    holder_done.set()  # the holder is woken first ...
    waiting.cancel()  # ... and leaves before this cancelled waiter runs its cleanup
    await asyncio.gather(held, waiting, last, return_exceptions=True)
    assert waiting.cancelled() and got == [2]
    async with slots:
        got.append(3)
    assert got == [2, 3]


async def test_failures_are_retried_with_the_same_webhook_id(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="k")
    peer.delivery_status["/cb"] = [500, 503]
    await publish(client)
    await wait_for(lambda: len(peer.to("/cb")) == 3)
    ids = {d.headers["webhook-id"] for d in peer.to("/cb")}
    assert len(ids) == 1 and {d.headers["x-hub-sequence"] for d in peer.to("/cb")} == {"1"}
    await wait_for(lambda: _states(app, ["delivered"]))
    (row,) = await deliveries(app)
    assert row.attempts == 3 and row.last_status == 204  # what the peer answered


async def test_a_delivery_records_the_2xx_the_callback_answered(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/a")
    await subscribe(client, peer, TOPIC, SUB + "/b")
    peer.delivery_status["/a"] = [202]
    peer.delivery_status["/b"] = [204]
    await publish(client)
    await wait_for(lambda: _states(app, ["delivered", "delivered"]))
    assert sorted(d.last_status for d in await deliveries(app)) == [202, 204]


async def _states(app, expected):
    return [d.state for d in await deliveries(app)] == expected


async def test_connection_errors_are_retried(make_app, peer):
    import httpx

    from tests.hub.conftest import hub_settings

    to_peer = httpx.ASGITransport(app=peer.app)
    posts = []

    async def first_post_refused(request):
        if request.method == "POST":
            posts.append(request)
            if len(posts) == 1:
                raise httpx.ConnectError("connection refused")
        return await to_peer.handle_async_request(request)

    app, client = await make_app(transport=httpx.MockTransport(first_post_refused), **hub_settings())
    await subscribe(client, peer, TOPIC, SUB + "/cb")
    await publish(client)
    await wait_for(lambda: bool(peer.to("/cb")))
    assert len(posts) == 2


async def test_given_up_deliveries_show_in_the_subscription_status(make_hub, peer):
    app, client = await make_hub(delivery_max_age=0.0)
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="k")
    peer.delivery_status["/cb"] = [500]
    await publish(client)
    await wait_for(lambda: _states(app, ["failed"]))
    status = await _status(client, SUB + "/cb", "k")
    assert status.status_code == 200
    body = status.json()
    assert body["state"] == "active" and body["failed"] == 1 and "500" in body["last_failure"]
    assert body["last_seq"] == 1 and body["pending"] == 0


async def _status(client, callback, secret, topic=TOPIC, ts=None):
    ts = fresh_timestamp() if ts is None else ts
    proof = ownership_proof(secret, "status", callback, topic, ts)
    params = {"hub.callback": callback, "hub.topic": topic, "hub.timestamp": ts, "hub.signature": proof}
    return await client.get("/hub/status", params=params)


async def test_status_needs_proof_of_ownership(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="k")
    await subscribe(client, peer, TOPIC, SUB + "/open")
    assert (await _status(client, SUB + "/cb", "k")).json()["state"] == "active"
    assert (await _status(client, SUB + "/cb", "wrong")).status_code == 403
    assert (await _status(client, SUB + "/cb", "k", ts=int(time.time()) - 3600)).status_code == 403
    assert (await _status(client, SUB + "/open", "")).status_code == 403  # no secret, no proof possible
    assert (await _status(client, SUB + "/nobody", "k")).status_code == 403  # the same answer as a wrong proof
    assert (
        await client.get("/hub/status", params={"hub.callback": SUB + "/cb", "hub.topic": TOPIC})
    ).status_code == 400


async def test_replay_since_a_sequence_number(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="k")
    for body in (b"1", b"2", b"3"):
        await publish(client, body)
    await wait_for(lambda: len(peer.to("/cb")) == 3)
    await wait_for(lambda: _states(app, ["delivered"] * 3))
    ts = int(time.time())
    form = {
        "hub.callback": SUB + "/cb",
        "hub.topic": TOPIC,
        "hub.timestamp": str(ts),
        "hub.signature": ownership_proof("k", "replay", SUB + "/cb", TOPIC, ts, "1"),
        "hub.since": "1",
    }
    r = await client.post("/hub/replay", data=form)
    assert r.status_code == 202 and r.json() == {"queued": 2}
    await wait_for(lambda: len(peer.to("/cb")) == 5)
    again = peer.to("/cb")[3:]
    assert [(d.body, d.headers["x-hub-sequence"]) for d in again] == [(b"2", "2"), (b"3", "3")]
    assert [d.headers["webhook-id"] for d in again] == [d.headers["webhook-id"] for d in peer.to("/cb")[1:3]]
    r = await client.post("/hub/replay", data={**form, "hub.signature": "0" * 64})
    assert r.status_code == 403


async def test_410_ends_the_subscription(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="k")
    peer.delivery_status["/cb"] = [410]
    await publish(client, b"1")
    await wait_for(lambda: _gone(app))
    await publish(client, b"2")
    assert len(peer.to("/cb")) == 1
    assert (await _status(client, SUB + "/cb", "k")).json()["state"] == "gone"


async def _gone(app):
    row = await store.find(app.state.hub.services.sessions, TOPIC, SUB + "/cb")
    return row.state == "gone"


async def test_in_order_per_subscription_even_when_retrying(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb")
    await subscribe(client, peer, TOPIC, SUB + "/other")
    peer.delivery_status["/cb"] = [500, 500, 500]
    for body in (b"1", b"2", b"3", b"4"):
        await publish(client, body)
    await wait_for(lambda: len([d for d in peer.to("/cb")]) >= 7)
    got = [d.body for d in peer.to("/cb")]
    assert got[:3] == [b"1", b"1", b"1"] and got[3:] == [b"1", b"2", b"3", b"4"]
    assert [d.headers["x-hub-sequence"] for d in peer.to("/cb")[3:]] == ["1", "2", "3", "4"]
    assert [d.body for d in peer.to("/other")] == [b"1", b"2", b"3", b"4"]


async def test_relay_online_makes_pending_deliveries_due_now(make_hub, peer):
    app, client = await make_hub(delivery_retry_base=3600.0)
    callback = SUB + "/relay/alice/cb"
    await subscribe(client, peer, TOPIC, callback)
    peer.delivery_status["/relay/alice/cb"] = [504]  # as the relay answers when nobody polls
    await publish(client)
    await wait_for(lambda: len(peer.to("/relay/alice/cb")) == 1)
    await wait_for(lambda: _retry_scheduled(app))
    await app.state.hub.services.broker.publish("relay.online", b"http://sub.test/relay/bob/")
    await app.state.hub.services.broker.publish("relay.online", b"http://sub.test/relay/alice/")
    await wait_for(lambda: len(peer.to("/relay/alice/cb")) == 2)


async def _retry_scheduled(app):
    (row,) = await deliveries(app)
    return row.state == "pending" and row.claim_token is None and row.next_attempt_at > time.time() + 60


async def test_a_burst_of_relay_names_coming_online_hurries_exactly_theirs(make_hub, peer):
    """A mass registration announces thousands of names at once; they are handled in one pass,
    and only the deliveries of names that came online go early."""
    app, client = await make_hub(delivery_retry_base=3600.0)
    names = ["alice", "bob", "carol"]
    for name in names:
        await subscribe(client, peer, TOPIC, f"{SUB}/relay/{name}/cb")
        peer.delivery_status[f"/relay/{name}/cb"] = [504]
    await publish(client)
    await wait_for(lambda: all(len(peer.to(f"/relay/{n}/cb")) == 1 for n in names))
    await wait_for(lambda: _all_deferred(app, 3))
    broker = app.state.hub.services.broker
    for i in range(500):
        await broker.publish("relay.online", f"{SUB}/relay/other{i}/".encode())
    await broker.publish("relay.online", f"{SUB}/relay/alice/".encode())
    await broker.publish("relay.online", f"{SUB}/relay/carol/".encode())
    await wait_for(lambda: _states(app, ["delivered", "pending", "delivered"]))
    bob = (await deliveries(app))[1]
    assert bob.next_attempt_at > time.time() + 60 and bob.attempts == 1
    assert len(peer.to("/relay/alice/cb")) == 2 and len(peer.to("/relay/carol/cb")) == 2
    assert len(peer.to("/relay/bob/cb")) == 1


async def _all_deferred(app, count):
    rows = await deliveries(app)
    return len(rows) == count and all(r.claim_token is None and r.next_attempt_at > time.time() + 60 for r in rows)


@pytest.mark.parametrize(
    "url",
    [
        "http://A.example:80/x",
        "https://u:p@H.com:443/",
        "http://h:8080",
        "http://[::1]:80/a?b",
        "https://h:80/",
        "http://Sub.TEST:8443/relay/x/cb?a=1",
    ],
)
def test_the_fairness_key_is_the_callback_hosts_netloc(url):
    assert netloc(url) == httpx.URL(url).netloc.decode()


def test_one_host_spelled_many_ways_is_one_fairness_key():
    spellings = ["http://localhost:8080/a", "http://127.1:8080/b", "http://2130706433:8080/", "http://0x7f000001:8080"]
    assert {netloc(url) for url in spellings} == {"127.0.0.1:8080"}
    assert netloc("http://[::ffff:127.0.0.1]/x") == "127.0.0.1"


async def test_a_dead_process_claims_are_taken_over(make_hub, peer):
    app, client = await make_hub(delivery_claim_seconds=0.2)
    await subscribe(client, peer, TOPIC, SUB + "/cb")
    app.state.hub.outbox.close()  # this process's workers are gone
    await publish(client)
    sessions = app.state.hub.services.sessions
    (claimed,) = await store.claim(sessions, 10, 0.2)  # another process claims it, then dies
    assert await store.claim(sessions, 10, 0.2) == []  # nobody else can take it meanwhile
    await wait_for(lambda: _claimable(sessions))


async def test_a_claim_takes_at_most_its_limit_oldest_first_and_one_per_subscription(make_hub, peer):
    app, client = await make_hub()
    for i in range(5):
        await subscribe(client, peer, TOPIC, f"{SUB}/cb{i}")
    app.state.hub.outbox.close()  # claims are made by hand here
    await publish(client, b"first")
    await publish(client, b"second")  # each subscription's second delivery waits for its first
    sessions = app.state.hub.services.sessions
    pending = await deliveries(app)
    firsts = sorted((d for d in pending if d.seq == 1), key=lambda d: d.id)
    assert len(pending) == 10 and len(firsts) == 5
    one = await store.claim(sessions, 2, 60)
    two = await store.claim(sessions, 2, 60)
    three = await store.claim(sessions, 2, 60)
    assert [len(one), len(two), len(three)] == [2, 2, 1]
    assert [c.id for c in one + two + three] == [d.id for d in firsts]
    assert await store.claim(sessions, 2, 60) == []
    claimed = {d.id: d.claim_token for d in await deliveries(app)}
    assert all(claimed[d.id] for d in firsts) and sum(1 for t in claimed.values() if t) == 5


async def _claimable(sessions):
    return len(await store.claim(sessions, 10, 60)) == 1


async def test_deliveries_keep_going_after_a_restart_on_the_same_database(make_hub, peer, settings):
    app, client = await make_hub()
    await subscribe(client, peer, TOPIC, SUB + "/cb")
    app.state.hub.outbox.close()
    await publish(client, b"queued before the restart")
    async with app.state.hub.services.sessions.begin() as s:
        await s.execute(update(Delivery).values(next_attempt_at=time.time()))
    app2, _ = await make_hub()
    await wait_for(lambda: bool(peer.to("/cb")))
    assert peer.to("/cb")[0].body == b"queued before the restart"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1/x", False),
        ("http://10.0.0.8/x", False),
        ("http://192.168.1.1/x", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("http://[::1]/x", False),
        ("http://[::ffff:127.0.0.1]/x", False),
        ("http://0.0.0.0/x", False),
        ("http://localhost/x", False),
        ("http://93.184.216.34/x", True),
        ("http://hub.test/relay/alice/cb", True),  # our own relay URLs
    ],
)
async def test_netguard(url, allowed):
    from hub.errors import URLRefused

    guard = NetGuard(Settings(public_url="http://hub.test"))
    if allowed:
        await guard.check(url)
    else:
        with pytest.raises(URLRefused):
            await guard.check(url)
    await NetGuard(Settings(public_url="http://hub.test", allow_private_networks=True)).check(url)


async def test_pending_cap_skips_new_deliveries_and_says_so(make_hub, peer):
    # A callback that keeps failing: its deliveries stay pending (retried far in the future).
    app, client = await make_hub(max_pending_per_subscription=2, delivery_retry_base=3600.0)
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="k")
    peer.delivery_status["/cb"] = [500] * 10
    for body in (b"one", b"two", b"three"):
        await publish(client, body)
    await wait_for(lambda: any(d.path == "/cb" for d in peer.deliveries))
    body = (await _status(client, SUB + "/cb", "k")).json()
    # The third update was not queued, but its sequence number was used and the skip recorded.
    assert body["last_seq"] == 3
    assert body["pending"] == 2
    assert body["failed"] == 1 and "already pending" in body["last_failure"]
