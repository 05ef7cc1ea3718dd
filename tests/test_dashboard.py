"""The dashboard (issue 6): off without an admin token, login cookie, CSRF, live rates over SSE."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from reversehub.core.settings import token_digest
from reversehub.server.dashboard import auth
from reversehub.server.dashboard.live import Sampler
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOKEN = "admin-s3cret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PATHS = ["/", "/dashboard/login", "/dashboard/events", "/dashboard/api/state", "/dashboard/static/dashboard.js"]


@pytest.fixture
async def admin_app(make_app):
    return await make_app(admin_token=TOKEN)


async def test_off_without_an_admin_token(client):
    for path in PATHS:
        assert (await client.get(path)).status_code == 404, path
    assert (await client.post("/dashboard/login", data={"token": "x"})).status_code == 404
    assert (await client.post("/dashboard/api/deliveries/1/retry")).status_code == 404


async def test_strangers_are_sent_to_the_login_form(admin_app):
    _, client = admin_app
    r = await client.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    for path in ("/dashboard/events", "/dashboard/api/state"):
        r = await client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
    form = await client.get("/dashboard/login")
    assert form.status_code == 200 and 'type="password"' in form.text and 'method="post"' in form.text


async def test_login_sets_a_strict_httponly_cookie_without_the_token(admin_app):
    _, client = admin_app
    wrong = await client.post("/dashboard/login", data={"token": "guess"})
    assert wrong.status_code == 401 and "not the admin token" in wrong.text and "set-cookie" not in wrong.headers
    r = await client.post("/dashboard/login", data={"token": TOKEN})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie and TOKEN not in r.headers["location"]
    page = await client.get("/")  # the client keeps the cookie
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert f'<meta name="csrf-token" content="{auth.csrf_token(token_digest(TOKEN))}">' in page.text
    assert TOKEN not in page.text
    out = await client.post("/dashboard/logout")
    assert out.status_code == 303
    assert (await client.get("/")).status_code == 303


async def test_bearer_reads_the_api(admin_app):
    _, client = admin_app
    r = await client.get("/dashboard/api/state", headers=BEARER)
    assert r.status_code == 200
    assert set(r.json()) >= {"registrations", "subscriptions", "deliveries"}


async def test_actions_need_the_csrf_token_with_the_cookie(admin_app):
    _, client = admin_app
    await client.post("/dashboard/login", data={"token": TOKEN})
    url = "/dashboard/api/deliveries/999/retry"
    assert (await client.post(url)).status_code == 403
    assert (await client.post(url, headers={"X-CSRF-Token": "forged"})).status_code == 403
    csrf = auth.csrf_token(token_digest(TOKEN))
    assert (await client.post(url, headers={"X-CSRF-Token": csrf})).status_code == 404  # no such delivery
    client.cookies.clear()
    assert (await client.post(url, headers=BEARER)).status_code == 404
    assert (await client.post(url, headers={"X-CSRF-Token": csrf})).status_code == 403  # CSRF alone is nothing


async def test_static_files(admin_app):
    _, client = admin_app
    js = await client.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in js.text and "innerHTML" not in js.text
    assert (await client.get("/dashboard/static/../auth.py")).status_code == 404
    assert (await client.get("/dashboard/static/state.py")).status_code == 404


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


async def test_events_stream_live_rates(make_app):
    app, client = await make_app(admin_token=TOKEN, dashboard_interval=0.01)
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


async def test_events_end_when_the_server_stops(make_app):
    app, _ = await make_app(admin_token=TOKEN, dashboard_interval=30.0)
    app.state.stopping = anyio.Event()
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


async def api(client) -> dict:
    r = await client.get("/dashboard/api/state", headers=BEARER)
    assert r.status_code == 200
    return r.json()


async def failing_delivery(make_app):
    """An app with one subscription whose first delivery failed and waits an hour for its retry."""
    subscriber = Subscriber()
    app, client = await make_app(
        admin_token=TOKEN,
        transport=httpx.ASGITransport(app=subscriber),
        trusted_networks=("0.0.0.0/0",),
        delivery_retry_base=3600.0,
        outbox_scan_interval=0.05,
    )

    async def accepted() -> bool:  # right after start the hub may still answer 503 (its workers start)
        form = {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": CALLBACK}
        return (await client.post("/hub", data=form)).status_code == 202

    await wait_for(accepted)

    async def subscribed() -> bool:
        return any(s["state"] == "active" for s in (await api(client))["subscriptions"])

    await wait_for(subscribed)
    r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"news", headers={"Content-Type": "text/plain"})
    assert r.status_code < 300

    async def retrying() -> bool:
        return [d["state"] for d in (await api(client))["deliveries"]] == ["retrying"]

    await wait_for(retrying)
    return app, client, subscriber, (await api(client))["deliveries"][0]


async def test_tables_show_a_failing_delivery_and_retry_now_delivers_it(make_app):
    app, client, subscriber, delivery = await failing_delivery(make_app)
    assert delivery["topic"] == TOPIC and delivery["callback"] == CALLBACK and delivery["attempts"] == 1
    assert delivery["last_status"] == 500 and delivery["next_attempt_at"] > time.time() + 60
    [sub] = (await api(client))["subscriptions"]
    assert sub["pending"] == 1 and sub["callback"] == CALLBACK
    subscriber.accept = True
    url = f"/dashboard/api/deliveries/{delivery['id']}/retry"
    assert (await client.post(url, headers=BEARER)).status_code == 204
    await wait_for(lambda: subscriber.received == [b"news"])

    async def done() -> bool:
        return (await api(client))["deliveries"] == []

    await wait_for(done)
    again = await client.post(url, headers=BEARER)
    assert again.status_code == 409 and "delivered" in again.text


async def test_cancel_a_delivery(make_app):
    app, client, subscriber, delivery = await failing_delivery(make_app)
    r = await client.post(f"/dashboard/api/deliveries/{delivery['id']}/cancel", headers=BEARER)
    assert r.status_code == 204
    assert (await api(client))["deliveries"] == []
    assert (await client.post("/dashboard/api/deliveries/999999/cancel", headers=BEARER)).status_code == 404
    assert (await client.post("/dashboard/api/deliveries/abc/cancel", headers=BEARER)).status_code == 404


async def test_delete_a_subscription(make_app):
    app, client, subscriber, delivery = await failing_delivery(make_app)
    [sub] = (await api(client))["subscriptions"]
    assert (await client.post(f"/dashboard/api/subscriptions/{sub['id']}/delete", headers=BEARER)).status_code == 204
    state = await api(client)
    assert state["subscriptions"] == [] and state["deliveries"] == []
    subscriber.accept = True
    r = await client.post(f"/publish?hub.topic={TOPIC}", content=b"more", headers={"Content-Type": "text/plain"})
    assert r.status_code < 300
    assert (await api(client))["deliveries"] == [] and subscriber.received == []


async def test_registrations_and_their_deletion(admin_app):
    app, client = admin_app
    r = await client.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})
    assert r.status_code == 201
    [reg] = (await api(client))["registrations"]
    assert reg["name"] == "alice" and reg["pollers"] == 0 and reg["queued"] == 0 and reg["lease_seconds"] == 600
    assert (await client.post("/dashboard/api/registrations/ALICE/delete", headers=BEARER)).status_code == 204
    assert (await api(client))["registrations"] == []
    assert (await client.get(r.headers["location"])).status_code == 404  # the private URL is gone
    assert (await client.post("/dashboard/api/registrations/alice/delete", headers=BEARER)).status_code == 404
