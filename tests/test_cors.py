"""CORS (reversehub.server.cors): preflights and response headers for the URLs a cross-origin page
uses, none for relayed responses or the admin, and nothing at all without ``--cors-origin``."""

from __future__ import annotations

import anyio
import httpx
import pytest
from click.testing import CliRunner

from relay.wire import parse_request
from reversehub.server.app import create_admin_app
from reversehub.server.cli import main
from reversehub.server.cors import parse_origin
from tests.conftest import CLIENT
from tests.relay.helpers import register, serve_one

pytestmark = pytest.mark.anyio

PAGE = "http://page.test:8080"
OTHER = "http://evil.test"


def preflight(method: str, origin: str = PAGE, headers: str = "content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def test_without_the_flag_nothing_changes(client):
    r = await client.options("/reversehttp", headers=preflight("POST"))
    assert r.status_code == 405
    assert not [k for k in r.headers if k.startswith("access-control-")]
    r = await client.post("/reversehttp", data={"name": "alice"}, headers={"Origin": PAGE})
    assert r.status_code == 201
    assert not [k for k in r.headers if k.startswith("access-control-")] and "vary" not in r.headers


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [
        ("/reversehttp", "POST", "GET, HEAD, POST"),
        ("/hub", "POST", "POST"),
        ("/hub/status", "GET", "GET"),
        ("/hub/replay", "POST", "POST"),
        ("/publish", "POST", "POST"),
        ("/js/reversehub.js", "GET", "GET, HEAD"),
        ("/reversehttp/r/abc", "POST", "GET, POST"),
        ("/reversehttp/p/abc", "DELETE", "DELETE, GET, HEAD, POST, PUT"),
        ("/reversehttp/m/abc", "GET", "GET, HEAD"),
    ],
)
async def test_a_preflight_from_an_allowed_origin_is_answered(make_app, path, method, allowed):
    _, client = await make_app(cors_origins=(PAGE,))
    r = await client.options(path, headers=preflight(method, headers="content-type,idempotency-key"))
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == PAGE
    assert r.headers["vary"] == "Origin"
    assert r.headers["access-control-allow-methods"] == allowed
    allowed_headers = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "idempotency-key", "authorization"} <= allowed_headers
    assert int(r.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in r.headers


async def test_other_origins_are_refused_and_nothing_is_allowed_them(make_app):
    _, client = await make_app(cors_origins=(PAGE, "https://second.test"))
    r = await client.options("/reversehttp", headers=preflight("POST", origin=OTHER))
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = await client.post("/reversehttp", data={"name": "alice"}, headers={"Origin": OTHER})
    assert r.status_code == 201  # a simple request is the server's to answer; the browser hides it
    assert "access-control-allow-origin" not in r.headers and r.headers["vary"] == "Origin"
    r = await client.options("/hub", headers=preflight("POST", origin="https://second.test"))
    assert r.headers["access-control-allow-origin"] == "https://second.test"


async def test_responses_carry_the_origin_and_expose_what_the_library_reads(make_app):
    _, client = await make_app(cors_origins=(PAGE,))
    r = await client.post("/reversehttp", data={"name": "alice"}, headers={"Origin": PAGE})
    assert r.status_code == 201
    assert r.headers["access-control-allow-origin"] == PAGE
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"link", "location", "retry-after", "x-hub-sequence", "idempotent-replayed", "webhook-id", "date"} <= exposed
    # Errors too: the page reads why it was refused.
    r = await client.post("/hub", data={"hub.mode": "nonsense"}, headers={"Origin": PAGE})
    assert 400 <= r.status_code < 500 and r.headers["access-control-allow-origin"] == PAGE
    r = await client.get("/js/reversehub.js", headers={"Origin": PAGE})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE


async def test_a_star_allows_every_origin_without_credentials(make_app):
    _, client = await make_app(cors_origins=("*",))
    r = await client.options("/publish", headers=preflight("POST", origin=OTHER))
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    r = await client.get("/hub/status", headers={"Origin": "null"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


async def test_a_page_on_a_public_address_may_reach_a_private_server(make_app):
    _, client = await make_app(cors_origins=(PAGE,))
    asking = {**preflight("POST"), "Access-Control-Request-Private-Network": "true"}
    r = await client.options("/reversehttp", headers=asking)
    assert r.status_code == 204 and r.headers["access-control-allow-private-network"] == "true"
    assert (
        "access-control-allow-private-network" not in (await client.options("/hub", headers=preflight("POST"))).headers
    )
    r = await client.options("/reversehttp", headers={**asking, "Origin": OTHER})
    assert r.status_code == 403 and "access-control-allow-private-network" not in r.headers


async def test_a_request_url_is_usable_across_origins(make_app):
    _, client = await make_app(cors_origins=(PAGE,))
    urls = await register(client, "alice")
    r = await client.options(urls["first"], headers=preflight("POST", headers="content-type"))
    assert r.status_code == 204 and "POST" in r.headers["access-control-allow-methods"]
    r = await client.get(urls["first"], headers={"Origin": PAGE, "accept": "message/http"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == PAGE  # the poll timed out
    r = await client.delete(urls["location"], headers={"Origin": PAGE})
    assert r.status_code < 300 and r.headers["access-control-allow-origin"] == PAGE


@pytest.mark.parametrize("domain", [None, "relay.test"])
async def test_relayed_responses_stay_the_applications_own(make_app, domain):
    _, client = await make_app(cors_origins=("*",), relay_domain=domain)
    urls = await register(client, "alice")
    result = {}

    async def requester() -> None:
        result["r"] = await client.options(urls["related"] + "x", headers=preflight("PUT", origin=PAGE))

    async with anyio.create_task_group() as tg:
        tg.start_soon(requester)
        raw, _ = await serve_one(client, urls["first"], status=200, body=b"", headers={"Allow": "GET"})
    request = parse_request(raw)
    assert request.method == "OPTIONS"  # relayed to the application, not answered by us
    assert ("access-control-request-method", "PUT") in request.headers
    r = result["r"]
    assert r.status_code == 200 and r.headers["allow"] == "GET"
    assert not [k for k in r.headers if k.startswith("access-control-")]


async def test_the_admin_gets_no_cors(make_app):
    # With host-based names the dashboard and the list of names live on the main host.
    _, client = await make_app(cors_origins=("*",), relay_domain="relay.test", admin_token="secret-token")
    bearer = {"Authorization": "Bearer secret-token", "Origin": PAGE}
    r = await client.get("/reversehttp", headers=bearer)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = await client.options("/reversehttp", headers=preflight("GET"))
    assert r.headers["access-control-allow-methods"] == "POST"  # registering stays open to pages
    for path in ("/", "/dashboard/api/state"):
        r = await client.get(path, headers=bearer)
        assert "access-control-allow-origin" not in r.headers, path
        r = await client.options(path, headers=preflight("GET"))
        assert "access-control-allow-origin" not in r.headers, path
    assert "access-control-allow-origin" not in (await client.get("/healthz", headers=bearer)).headers


async def test_the_admin_listener_gets_no_cors(make_app):
    # With path-based names the admin has its own listener (create_admin_app): no CORS layer there.
    app, client = await make_app(cors_origins=("*",), admin_token="secret-token")
    transport = httpx.ASGITransport(app=create_admin_app(app), client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as admin:
        bearer = {"Authorization": "Bearer secret-token", "Origin": PAGE}
        for path in ("/reversehttp", "/dashboard/api/state"):
            r = await admin.get(path, headers=bearer)
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers, path
            r = await admin.options(path, headers=preflight("GET"))
            assert "access-control-allow-origin" not in r.headers, path
    # The main listener's gateway answers 404 to GET there, and only POST is open to pages.
    r = await client.options("/reversehttp", headers=preflight("GET"))
    assert r.headers["access-control-allow-methods"] == "POST"


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("*", "*"),
        ("HTTP://Page.Test:80", "http://page.test"),
        ("https://page.test:443/", "https://page.test"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_origins_are_spelled_as_browsers_send_them(given, origin):
    assert parse_origin(given) == origin


@pytest.mark.parametrize("bad", ["page.test", "http://page.test/app", "ftp://page.test", "http://u:p@page.test", ""])
def test_what_is_not_an_origin_is_refused(bad):
    with pytest.raises(ValueError):
        parse_origin(bad)


def test_the_flag_is_repeatable_and_its_variable_comma_separated(monkeypatch):
    from reversehub.server import cli

    seen = {}
    monkeypatch.setattr(cli, "settings_from", lambda options: seen.update(options) or (_ for _ in ()).throw(SystemExit))
    runner = CliRunner()
    runner.invoke(main, ["serve", "--cors-origin", "http://a.test", "--cors-origin", "*"])
    assert seen["cors_origins"] == ("http://a.test", "*")
    runner.invoke(main, ["serve"], env={"REVERSEHUB_CORS_ORIGINS": "http://a.test, https://b.test"})
    assert seen["cors_origins"] == ("http://a.test", "https://b.test")
    bad = runner.invoke(main, ["serve", "--cors-origin", "http://a.test/path"])
    assert bad.exit_code == 2 and "not an origin" in bad.output
