"""The landing page at ``/`` (main host only), the start-up checks and log lines, and ``/tls-ask``
(Caddy's on-demand TLS question) for host-based relay names."""

from __future__ import annotations

import html
import re
from dataclasses import replace

import httpx
import pytest

from reversehub.core.settings import Settings
from reversehub.server import startup
from reversehub.server.app import create_admin_app
from tests.conftest import CLIENT

pytestmark = pytest.mark.anyio

TOKEN = "admin-landing-s3cret"


def links(page: str) -> set[str]:
    return {html.unescape(h) for h in re.findall(r'href="([^"]*)"', page)}


async def test_the_landing_page_says_what_this_is_and_where_everything_is(make_app):
    _, client = await make_app()
    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "WebSub hub" in page and "ReverseHttp relay" in page
    assert {"demo", "reversehttp", "js/reversehub.js", "healthz"} <= links(page)
    assert "http://hub.test/relay/NAME/" in page and "POST http://hub.test/hub" in page
    assert "--admin-token" in page  # the dashboard is off, and how to turn it on
    assert "<script" not in page and "src=" not in page  # nothing runs, nothing is loaded from elsewhere
    assert "default-src 'none'" in r.headers["content-security-policy"]
    for path in links(page):  # every link of the page answers, relative to the page's URL
        if "://" not in path:
            assert (await client.get("/" + path)).status_code == 200, path
    assert (await client.head("/")).status_code == 200


async def test_the_landing_page_names_the_admin_listener_but_never_a_token(make_app):
    app, client = await make_app(admin_token=TOKEN)
    app.state.admin_url = "http://127.0.0.1:8001/"  # what serve's with_admin sets once it has bound it
    page = (await client.get("/")).text
    assert "http://127.0.0.1:8001/" in links(page) and "admin listener" in page
    assert "reversehttp" not in links(page)  # the list of names is the admin's with a token
    assert TOKEN not in page and "sha256:" not in page


async def test_with_host_based_names_the_dashboard_moves_to_dashboard_and_relay_hosts_get_no_landing(make_app):
    app, client = await make_app(admin_token=TOKEN, relay_domain="relay.test", public_url="https://hub.test")
    page = (await client.get("/")).text
    assert "https://hub.test/dashboard/" in links(page) and "https://NAME.relay.test/" in page
    assert TOKEN not in page
    shell = await client.get("/dashboard/")
    assert shell.status_code == 200 and '<table id="deliveries">' in shell.text
    # A relay application's origin gets its own content (here: no such name), never the landing page.
    r = await client.get("https://alice.relay.test/")
    assert r.status_code == 404 and "reversehub" not in r.text
    assert (await client.get("https://a.b.relay.test/")).status_code == 404


async def test_the_admin_listener_still_serves_the_dashboard_at_its_root(make_app):
    app, _ = await make_app(admin_token=TOKEN)
    transport = httpx.ASGITransport(app=create_admin_app(app), client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as admin:
        for path in ("/", "/dashboard/"):
            r = await admin.get(path)
            assert r.status_code == 200 and '<table id="deliveries">' in r.text, path


async def test_values_on_the_page_are_escaped(make_app):
    _, client = await make_app(public_url="http://hub.test/<b>x</b>&")
    page = (await client.get("http://hub.test/")).text
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;&amp;" in page


async def test_tls_ask_allows_the_main_host_and_registered_names_only(make_app):
    _, client = await make_app(relay_domain="relay.test", public_url="https://hub.test")
    assert (await client.post("/reversehttp", data={"name": "alice", "token": "t"})).status_code == 201

    async def ask(domain: str) -> int:
        return (await client.get("/tls-ask", params={"domain": domain})).status_code

    assert await ask("hub.test") == 200
    assert await ask("alice.relay.test") == 200 and await ask("ALICE.relay.test.") == 200
    for domain in ("bob.relay.test", "a.alice.relay.test", "relay.test", "evil.example", "", "x" * 300):
        assert await ask(domain) == 404, domain
    assert (await client.get("/tls-ask")).status_code == 404


# Start-up checks ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["http://0.0.0.0:8000", "https://[::]/", "http://0:8000", "ftp://hub.example.com", "hub.example.com", "http://:80"],
)
def test_public_urls_nobody_can_reach_are_refused(url):
    reason = startup.refusal(Settings(public_url=url))
    assert reason is not None and reason.startswith(f"--public-url {url}: ") and "\n" not in reason


@pytest.mark.parametrize("url", ["https://hub.example.com", "http://127.0.0.1:8000", "https://h.example/prefix"])
def test_reachable_public_urls_are_accepted(url):
    assert startup.refusal(Settings(public_url=url)) is None


def test_a_public_url_inside_the_relay_domain_is_refused():
    for public in ("https://hub.relay.example", "https://a.b.relay.example:8443"):
        reason = startup.refusal(Settings(public_url=public, relay_domain="relay.example"))
        assert reason is not None and reason.startswith("the public URL's host ") and "--relay-domain" in reason
    for public in ("https://relay.example", "https://hub.example", "https://xrelay.example"):
        assert startup.refusal(Settings(public_url=public, relay_domain="relay.example")) is None, public


def test_listening_beyond_loopback_without_a_public_url_is_warned_about():
    assert startup.warnings(Settings(host="127.0.0.1")) == []
    assert startup.warnings(Settings(host="::1")) == []
    assert startup.warnings(Settings(host="0.0.0.0", public_url="https://hub.example.com")) == []
    (warning,) = startup.warnings(Settings(host="0.0.0.0"))
    assert "without --public-url" in warning and "http://0.0.0.0:8000" in warning
    (warning,) = startup.warnings(Settings(host="::", ssl_certfile="cert.pem"))
    assert "https://[::]:8000" in warning


def test_an_admin_listener_beyond_loopback_is_warned_about():
    assert startup.warnings(Settings(admin_token=TOKEN)) == []
    assert startup.warnings(Settings(admin_token=TOKEN, admin_listen="[::1]:8001")) == []
    assert startup.warnings(Settings(admin_listen="0.0.0.0:8001")) == []  # no admin: no listener
    (warning,) = startup.warnings(Settings(admin_token=TOKEN, admin_listen="0.0.0.0:8001"))
    assert warning.startswith("--admin-listen 0.0.0.0:8001 is beyond loopback") and TOKEN not in warning


def test_a_certificate_makes_the_default_public_url_https():
    assert Settings(port=8443, ssl_certfile="c.pem").public_origin == "https://127.0.0.1:8443"
    assert Settings(host="::1", port=80).public_origin == "http://[::1]:80"


def test_the_start_up_log_names_urls_database_and_dashboard_without_secrets():
    lines = "\n".join(
        startup.summary(
            Settings(
                public_url="https://hub.example.com",
                database_url="postgresql://hub:pw-s3cret@db.internal:5433/reversehub",
                redis_url="redis://:redis-s3cret@cache.internal:6380/2",
                admin_token=TOKEN,
            ),
            "http://127.0.0.1:8001/",
        )
    )
    for expected in (
        "https://hub.example.com/reversehttp",
        "https://hub.example.com/relay/NAME/",
        "https://hub.example.com/hub",
        "https://hub.example.com/demo",
        "dashboard at http://127.0.0.1:8001/",
        "postgresql hub@db.internal:5433/reversehub",
        "Redis cache.internal:6380/2",
    ):
        assert expected in lines, expected
    assert "s3cret" not in lines and TOKEN not in lines

    sqlite = "\n".join(startup.summary(Settings(database_url="sqlite:///./x.db"), None))
    assert re.search(r"SQLite file /\S*/x\.db", sqlite) and "dashboard off" in sqlite
    hosts = "\n".join(startup.summary(replace(Settings(admin_token=TOKEN), relay_domain="r.example"), None))
    assert "dashboard at http://127.0.0.1:8000/dashboard/" in hosts and "http://NAME.r.example:8000/" in hosts
