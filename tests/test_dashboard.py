"""The dashboard (issue 6): off without an admin token, login cookie, CSRF, live rates over SSE."""

from __future__ import annotations

import json

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from reversehub.dashboard import auth
from reversehub.dashboard.live import Sampler
from reversehub.settings import token_digest

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
    publishes = Counter("reversehub_hub_publishes", "", ["kind"], registry=registry)
    latency = Histogram("reversehub_relay_request_seconds", "", registry=registry)
    relay = Counter("reversehub_relay_requests", "", registry=registry)
    sampler = Sampler(registry)
    first = sampler.sample()
    assert first["publishes"] == 0 and first["relay_latency_ms"] == 0
    publishes.labels(kind="fat").inc(3)
    publishes.labels(kind="ping").inc(2)
    latency.observe(0.010)
    latency.observe(0.030)
    relay.inc(2)
    second = sampler.sample()
    assert second["publishes_total"] == 5 and second["publishes"] > 0
    assert second["relay_requests_total"] == 2
    assert second["relay_latency_ms"] == pytest.approx(20.0)
    third = sampler.sample()
    assert third["publishes"] == 0 and third["relay_latency_ms"] == 0 and third["publishes_total"] == 5


async def test_events_stream_live_rates(make_app):
    app, _ = await make_app(admin_token=TOKEN, dashboard_interval=0.01)
    counter = Counter("reversehub_hub_publishes", "test", registry=app.state.services.metrics)
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
            counter.inc()
            events = [json.loads(line[6:]) for line in "".join(chunks).splitlines() if line.startswith("data: ")]
            if any(e["publishes_total"] >= 2 and e["publishes"] > 0 for e in events):
                seen_live_publish.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
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
    with anyio.fail_after(5):
        await app(scope, receive, send)
    text = "".join(chunks)
    assert text.startswith("retry: 2000\n\n")
    assert "event: rates\n" in text
