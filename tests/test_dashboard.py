"""The dashboard (issue 6) on its own origin (issue 12): off without an admin token, never on the
main listener with path-based relay names, sessions as Bearer (no cookie), live rates over SSE."""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from reversehub.core.broker.memory import MemoryBroker
from reversehub.server.app import create_admin_app
from reversehub.server.dashboard.live import Sampler
from tests.conftest import CLIENT
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOKEN = "admin-s3cret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_ORIGIN = "http://127.0.0.1:8001"
PATHS = [
    "/dashboard/",
    "/dashboard/login",
    "/dashboard/events",
    "/dashboard/api/state",
    "/dashboard/static/dashboard.js",
]
ACTIONS = [
    "/dashboard/api/deliveries/1/retry",
    "/dashboard/api/deliveries/1/cancel",
    "/dashboard/api/registrations/alice/delete",
    "/dashboard/api/subscriptions/1/delete",
    "/dashboard/logout",
]


@pytest.fixture
async def make_admin(make_app):
    """``app, client, admin = await make_admin(**overrides)``: the main app (admin token set) with a
    client on its public origin, and a client on its admin app (what ``--admin-listen`` serves)."""
    async with AsyncExitStack() as stack:

        async def factory(**overrides):
            app, client = await make_app(**{"admin_token": TOKEN, **overrides})
            transport = httpx.ASGITransport(app=create_admin_app(app), client=CLIENT)
            admin = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=ADMIN_ORIGIN))
            return app, client, admin

        yield factory


@pytest.fixture
async def admin_app(make_admin):
    return await make_admin()


async def sign_in(admin: httpx.AsyncClient) -> dict[str, str]:
    r = await admin.post("/dashboard/login", data={"token": TOKEN})
    assert r.status_code == 200
    return {"Authorization": f"Bearer {r.json()['session']}"}


async def test_off_without_an_admin_token(app_client):
    app, client = app_client
    transport = httpx.ASGITransport(app=create_admin_app(app), client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url=ADMIN_ORIGIN) as admin:
        for c in (client, admin):
            for path in PATHS:
                assert (await c.get(path)).status_code == 404, path
            assert (await c.post("/dashboard/login", data={"token": "x"})).status_code == 404
            assert (await c.post("/dashboard/api/deliveries/1/retry")).status_code == 404
        assert (await admin.get("/")).status_code == 404
        assert 'id="deliveries"' not in (await client.get("/")).text  # the main host's / is the landing page


async def test_the_main_listener_serves_no_admin_route(admin_app):
    _, client, _ = admin_app
    for path in PATHS:
        assert (await client.get(path, headers=BEARER)).status_code == 404, path
    assert 'id="deliveries"' not in (await client.get("/", headers=BEARER)).text  # the landing page
    assert (await client.post("/dashboard/login", data={"token": TOKEN})).status_code == 404
    for url in ACTIONS:
        assert (await client.post(url, headers=BEARER)).status_code == 404, url
    # The relay's list of names is an admin page too: on the admin listener only.
    assert (await client.get("/reversehttp", headers=BEARER)).status_code == 404
    assert (await client.post("/reversehttp", data={"name": "alice", "token": "t"})).status_code == 201


async def test_strangers_get_the_page_but_no_data(admin_app):
    _, _, admin = admin_app
    page = await admin.get("/")  # a shell: its script sends a stranger to the login form
    assert page.status_code == 200 and '<table id="deliveries">' in page.text
    for path in ("/dashboard/events", "/dashboard/api/state", "/reversehttp"):
        r = await admin.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
        assert (await admin.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
    for url in ACTIONS:
        assert (await admin.post(url)).status_code == 401, url
    form = await admin.get("/dashboard/login")
    assert form.status_code == 200 and 'type="password"' in form.text and 'method="post"' in form.text


async def test_login_returns_a_session_and_sets_no_cookie(admin_app):
    _, _, admin = admin_app
    wrong = await admin.post("/dashboard/login", data={"token": "guess"})
    assert wrong.status_code == 401 and "not the admin token" in wrong.text and "set-cookie" not in wrong.headers
    r = await admin.post("/dashboard/login", data={"token": TOKEN})
    assert r.status_code == 200 and "set-cookie" not in r.headers and r.headers["cache-control"] == "no-store"
    session = r.json()["session"]
    assert len(session) >= 32 and TOKEN not in r.text and r.json()["expires_in"] > 0
    assert admin.cookies == httpx.Cookies()
    signed_in = {"Authorization": f"Bearer {session}"}
    assert (await admin.get("/dashboard/api/state", headers=signed_in)).status_code == 200
    page = await admin.get("/")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and TOKEN not in page.text
    other = await sign_in(admin)  # sessions are independent: a second one is another id
    assert other != signed_in
    assert (await admin.post("/dashboard/logout", headers=signed_in)).status_code == 204
    assert (await admin.get("/dashboard/api/state", headers=signed_in)).status_code == 401
    assert (await admin.get("/dashboard/api/state", headers=other)).status_code == 200


async def test_a_cookie_authenticates_nothing(admin_app):
    _, _, admin = admin_app
    session = (await sign_in(admin))["Authorization"].removeprefix("Bearer ")
    for name in ("reversehub_admin", "session", "Authorization"):
        r = await admin.get("/dashboard/api/state", headers={"Cookie": f"{name}={session}"})
        assert r.status_code == 401
        r = await admin.post("/dashboard/api/deliveries/1/retry", headers={"Cookie": f"{name}={session}"})
        assert r.status_code == 401


async def test_sessions_expire(make_admin):
    _, _, admin = await make_admin(admin_session_seconds=0.2)
    signed_in = await sign_in(admin)
    assert (await admin.get("/dashboard/api/state", headers=signed_in)).status_code == 200

    async def expired() -> bool:
        return (await admin.get("/dashboard/api/state", headers=signed_in)).status_code == 401

    await wait_for(expired, timeout=5)


async def test_a_new_admin_token_ends_every_session(make_admin):
    broker = MemoryBroker()  # one broker between two processes' worth of apps
    _, _, admin = await make_admin(broker=broker)
    signed_in = await sign_in(admin)
    _, _, same_token = await make_admin(broker=broker)
    assert (await same_token.get("/dashboard/api/state", headers=signed_in)).status_code == 200
    _, _, rotated = await make_admin(broker=broker, admin_token="a-new-token")
    assert (await rotated.get("/dashboard/api/state", headers=signed_in)).status_code == 401
    await broker.aclose()


async def test_bearer_reads_the_api(admin_app):
    _, _, admin = admin_app
    r = await admin.get("/dashboard/api/state", headers=BEARER)
    assert r.status_code == 200
    assert set(r.json()) >= {"registrations", "subscriptions", "deliveries"}


async def test_actions_need_the_token_or_a_session(admin_app):
    _, _, admin = admin_app
    url = "/dashboard/api/deliveries/999/retry"
    assert (await admin.post(url)).status_code == 401
    assert (await admin.post(url, headers={"Authorization": "Bearer forged"})).status_code == 401
    signed_in = await sign_in(admin)
    assert (await admin.post(url, headers=signed_in)).status_code == 404  # no such delivery
    assert (await admin.post(url, headers=BEARER)).status_code == 404
    too_long = "/dashboard/api/deliveries/99999999999999999999999/retry"  # no row id, and no 500
    assert (await admin.post(too_long, headers=BEARER)).status_code == 404


async def test_the_list_of_names_is_on_the_admin_side(admin_app):
    _, client, admin = admin_app
    assert (await client.post("/reversehttp", data={"name": "alice", "token": "t"})).status_code == 201
    assert (await admin.get("/reversehttp")).status_code == 401
    assert (await admin.get("/reversehttp", headers={"Authorization": "Bearer nope"})).status_code == 401
    listing = await admin.get("/reversehttp", headers={**BEARER, "Accept": "application/json"})
    assert listing.status_code == 200 and listing.json()["registrations"] == 1
    session = await sign_in(admin)
    assert "alice" in (await admin.get("/reversehttp", headers=session)).text
    assert (await admin.post("/reversehttp", data={"name": "bob", "token": "t"})).status_code == 405


async def test_with_host_based_names_the_admin_is_on_the_main_host_only(make_app):
    _, client = await make_app(admin_token=TOKEN, relay_domain="relay.test")
    assert (await client.get("/dashboard/api/state", headers=BEARER)).status_code == 200
    r = await client.post("/dashboard/login", data={"token": TOKEN})
    assert r.status_code == 200
    for host in ("alice.relay.test", "x.alice.relay.test"):
        on_relay = {**BEARER, "Host": host}
        assert (await client.get("/dashboard/api/state", headers=on_relay)).status_code != 200
        assert (await client.post("/dashboard/login", data={"token": TOKEN}, headers={"Host": host})).status_code != 200


async def test_static_files(admin_app):
    _, _, admin = admin_app
    js = await admin.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in js.text and "Authorization" in js.text and "innerHTML" not in js.text
    assert "document.cookie" not in js.text and "localStorage" not in js.text
    assert (await admin.get("/dashboard/static/../auth.py")).status_code == 404
    assert (await admin.get("/dashboard/static/state.py")).status_code == 404


def test_sampler_turns_counters_into_rates_and_histograms_into_means():
    registry = CollectorRegistry()
    publishes = Counter("hub_publishes_total", "", ["kind"], registry=registry)
    deliveries = Counter("hub_deliveries_total", "", ["outcome"], registry=registry)
    latency = Histogram("relay_latency_seconds", "", registry=registry)
    relay = Counter("relay_requests", "", ["outcome"], registry=registry)
    sampler = Sampler(registry)
    first = sampler.sample()
    assert first["publishes"] == 0 and first["relay_latency_ms"] == 0
    publishes.labels(kind="fat").inc(3)
    publishes.labels(kind="ping").inc(2)
    latency.observe(0.010)
    latency.observe(0.030)
    relay.labels(outcome="answered").inc(2)
    deliveries.labels(outcome="delivered").inc(4)
    deliveries.labels(outcome="retry").inc(7)
    deliveries.labels(outcome="failed").inc(1)
    second = sampler.sample()
    assert second["publishes_total"] == 5 and second["publishes"] > 0
    assert second["relay_requests_total"] == 2
    assert second["deliveries_total"] == 4 and second["failures_total"] == 1
    assert second["relay_latency_ms"] == pytest.approx(20.0)
    third = sampler.sample()
    assert third["publishes"] == 0 and third["relay_latency_ms"] == 0 and third["publishes_total"] == 5


async def test_events_stream_live_rates(make_admin):
    main, client, _ = await make_admin(dashboard_interval=0.01)
    app = create_admin_app(main)
    chunks: list[str] = []
    seen_live_publish = anyio.Event()

    # ASGITransport buffers whole responses, so the stream is driven as plain ASGI here.
    async def receive() -> dict:
        await seen_live_publish.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
            assert (b"content-type", b"text/event-stream; charset=utf-8") in message["headers"]
        elif message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"].decode())
            assert (await client.get("/relay/nobody/")).status_code == 404  # counted by the relay
            events = [json.loads(line[6:]) for line in "".join(chunks).splitlines() if line.startswith("data: ")]
            if any(e["relay_requests_total"] >= 2 and e["relay_requests"] > 0 for e in events):
                seen_live_publish.set()

    with anyio.fail_after(5):
        await app({**sse_scope(), "asgi": {"version": "3.0"}}, receive, send)
    text = "".join(chunks)
    assert text.startswith("retry: 2000\n\n")
    assert "event: rates\n" in text


async def test_events_end_when_the_server_stops(make_admin):
    main, _, _ = await make_admin(dashboard_interval=30.0)
    main.state.stopping = anyio.Event()
    app = create_admin_app(main)
    bodies: list[bytes] = []

    async def receive() -> dict:
        await anyio.sleep_forever()
        return {}

    async def send(message: dict) -> None:
        if message.get("body"):
            bodies.append(message["body"])
            if len(bodies) == 2:  # retry + the first sample: now the server is told to stop
                app.state.stopping.set()

    with anyio.fail_after(5):
        await app(sse_scope(), receive, send)
    assert len(bodies) == 2


def sse_scope() -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/dashboard/events",
        "raw_path": b"/dashboard/events",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"hub.test"), (b"authorization", f"Bearer {TOKEN}".encode())],
        "client": ("203.0.113.7", 1),
        "server": ("hub.test", 80),
    }


# Tables and actions over the real relay and hub ---------------------------------------------------
TOPIC = "http://pub.test/feed"
CALLBACK = "http://sub.test/cb"


class Subscriber:
    """The callback's side (an ASGI app): confirms intent, then fails deliveries until told to accept."""

    def __init__(self) -> None:
        self.accept = False
        self.received: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        if request.method == "GET":
            response = PlainTextResponse(request.query_params.get("hub.challenge", ""))
        elif not self.accept:
            response = PlainTextResponse("not today", status_code=500)
        else:
            self.received.append(await request.body())
            response = Response(status_code=204)
        await response(scope, receive, send)


async def api(admin) -> dict:
    r = await admin.get("/dashboard/api/state", headers=BEARER)
    assert r.status_code == 200
    return r.json()


async def with_callbacks(make_admin, callbacks, **overrides):
    """``make_admin`` with every outbound request (verification, delivery) sent to ``callbacks``."""
    transport = httpx.ASGITransport(app=callbacks)
    return await make_admin(
        transport=transport, trusted_networks=("0.0.0.0/0",), outbox_scan_interval=0.05, **overrides
    )


async def failing_delivery(make_admin):
    """An app with one subscription whose first delivery failed and waits an hour for its retry:
    (its public client, its admin client, the subscriber, the delivery)."""
    subscriber = Subscriber()
    app, client, admin = await with_callbacks(make_admin, subscriber, delivery_retry_base=3600.0)

    async def accepted() -> bool:  # right after start the hub may still answer 503 (its workers start)
        form = {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": CALLBACK}
        return (await client.post("/hub", data=form)).status_code == 202

    await wait_for(accepted)

    async def subscribed() -> bool:
        return any(s["state"] == "active" for s in (await api(admin))["subscriptions"])

    await wait_for(subscribed)
    r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"news", headers={"Content-Type": "text/plain"})
    assert r.status_code < 300

    async def retrying() -> bool:
        return [d["state"] for d in (await api(admin))["deliveries"]] == ["retrying"]

    await wait_for(retrying)
    return client, admin, subscriber, (await api(admin))["deliveries"][0]


async def test_tables_show_a_failing_delivery_and_retry_now_delivers_it(make_admin):
    client, admin, subscriber, delivery = await failing_delivery(make_admin)
    assert delivery["topic"] == TOPIC and delivery["callback"] == CALLBACK and delivery["attempts"] == 1
    assert delivery["last_status"] == 500 and delivery["next_attempt_at"] > time.time() + 60
    [sub] = (await api(admin))["subscriptions"]
    assert sub["pending"] == 1 and sub["callback"] == CALLBACK
    subscriber.accept = True
    url = f"/dashboard/api/deliveries/{delivery['id']}/retry"
    assert (await admin.post(url, headers=BEARER)).status_code == 204
    await wait_for(lambda: subscriber.received == [b"news"])

    async def done() -> bool:
        return (await api(admin))["deliveries"] == []

    await wait_for(done)
    again = await admin.post(url, headers=BEARER)
    assert again.status_code == 409 and "delivered" in again.text


async def test_cancel_a_delivery(make_admin):
    client, admin, subscriber, delivery = await failing_delivery(make_admin)
    r = await admin.post(f"/dashboard/api/deliveries/{delivery['id']}/cancel", headers=BEARER)
    assert r.status_code == 204
    assert (await api(admin))["deliveries"] == []
    assert (await admin.post("/dashboard/api/deliveries/999999/cancel", headers=BEARER)).status_code == 404
    assert (await admin.post("/dashboard/api/deliveries/abc/cancel", headers=BEARER)).status_code == 404


async def test_delete_a_subscription(make_admin):
    client, admin, subscriber, delivery = await failing_delivery(make_admin)
    [sub] = (await api(admin))["subscriptions"]
    assert (await admin.post(f"/dashboard/api/subscriptions/{sub['id']}/delete", headers=BEARER)).status_code == 204
    state = await api(admin)
    assert state["subscriptions"] == [] and state["deliveries"] == []
    subscriber.accept = True
    r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"more", headers={"Content-Type": "text/plain"})
    assert r.status_code < 300
    assert (await api(admin))["deliveries"] == [] and subscriber.received == []


async def test_registrations_and_their_deletion(admin_app):
    _, client, admin = admin_app
    r = await client.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})
    assert r.status_code == 201
    [reg] = (await api(admin))["registrations"]
    assert reg["name"] == "alice" and reg["pollers"] == 0 and reg["queued"] == 0 and reg["lease_seconds"] == 600
    assert (await admin.post("/dashboard/api/registrations/ALICE/delete", headers=BEARER)).status_code == 204
    assert (await api(admin))["registrations"] == []
    assert (await client.get(r.headers["location"])).status_code == 404  # the private URL is gone
    assert (await admin.post("/dashboard/api/registrations/alice/delete", headers=BEARER)).status_code == 404


async def test_deleting_a_name_ends_its_polls_with_410(admin_app):
    _, client, admin = admin_app
    r = await client.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})
    request_url = next(link.split(">")[0][1:] for link in r.headers.get_list("link") if 'rel="first"' in link)
    result: dict[str, httpx.Response] = {}

    async def poll() -> None:
        result["poll"] = await client.get(request_url)

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)

        async def parked() -> bool:
            return [n["pollers"] for n in (await api(admin))["registrations"]] == [1]

        await wait_for(parked)
        assert (await admin.post("/dashboard/api/registrations/alice/delete", headers=BEARER)).status_code == 204
    assert result["poll"].status_code == 410


async def test_deliveries_say_why_they_wait(make_admin):
    client, admin, subscriber, first = await failing_delivery(make_admin)
    assert first["waiting"] == {"reason": "backoff", "until": first["next_attempt_at"]}
    r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"later", headers={"Content-Type": "text/plain"})
    assert r.status_code < 300

    async def both() -> bool:
        return len((await api(admin))["deliveries"]) == 2

    await wait_for(both)
    by_seq = {d["seq"]: d for d in (await api(admin))["deliveries"]}
    assert by_seq[first["seq"]]["waiting"]["reason"] == "backoff"
    later = by_seq[first["seq"] + 1]
    # Due long ago, never attempted: it waits for the first (the outbox keeps a subscription's order).
    assert later["attempts"] == 0 and later["state"] == "pending"
    assert later["waiting"] == {"reason": "behind", "seq": first["seq"]}


class Stuck:
    """A callback host that confirms intent at once and holds every delivery until released."""

    def __init__(self) -> None:
        self.release = anyio.Event()

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        if request.method == "GET":
            response: Response = PlainTextResponse(request.query_params.get("hub.challenge", ""))
        else:
            await self.release.wait()
            response = Response(status_code=204)
        await response(scope, receive, send)


async def test_a_delivery_to_a_saturated_host_says_so(make_admin):
    stuck = Stuck()
    app, client, admin = await with_callbacks(make_admin, stuck, delivery_per_host=1)
    try:
        callbacks = [f"http://stuck.test/cb{i}" for i in range(8)]
        for callback in callbacks:
            form = {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": callback}

            async def accepted(form: dict[str, str] = form) -> bool:
                return (await client.post("/hub", data=form)).status_code == 202

            await wait_for(accepted)

        async def all_active() -> bool:
            subs = (await api(admin))["subscriptions"]
            return len(subs) == len(callbacks) and all(s["state"] == "active" for s in subs)

        await wait_for(all_active)
        r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"news", headers={"Content-Type": "text/plain"})
        assert r.status_code < 300

        async def saturated() -> bool:
            waits = [d["waiting"] for d in (await api(admin))["deliveries"] if d["waiting"]]
            return any(w["reason"] == "host saturated" for w in waits)

        await wait_for(saturated)
        deliveries = (await api(admin))["deliveries"]
        # One is sent at a time (delivery_per_host=1); the others are claimed but wait for the host.
        waits = [d["waiting"] for d in deliveries if d["waiting"]]
        assert waits and all(w["host"] == "stuck.test" and w["limit"] == 1 and w["in_flight"] > 1 for w in waits)
    finally:
        stuck.release.set()
