"""Host-based relay names (``--relay-domain``): URLs, routing by Host, the hub reaching them in-process."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette

from hub.models import Subscription
from hub.netguard import NetGuard
from relay.routes import Kind, RelayUrls
from relay.wire import HttpResponse, parse_request, serialize_response
from reversehub.core.outbound import OwnRelay, own_urls
from reversehub.core.settings import Settings
from tests.conftest import PUBLIC
from tests.relay.helpers import links, register, serve_one
from tests.support import wait_for

pytestmark = pytest.mark.anyio

DOMAIN = "relay.test"


def urls_for(public_url: str, domain: str | None = DOMAIN) -> RelayUrls:
    return RelayUrls(Settings(public_url=public_url, relay_domain=domain))


def test_public_urls_take_scheme_and_port_from_the_public_url():
    assert urls_for("http://hub.test").public_url("alice") == "http://alice.relay.test/"
    assert urls_for("https://hub.test:8443/").public_url("alice") == "https://alice.relay.test:8443/"
    assert urls_for("http://hub.test", domain=None).public_url("alice") == "http://hub.test/relay/alice/"
    # The capability URLs stay on the main host either way.
    assert urls_for("http://hub.test").request_url("CAP") == "http://hub.test/reversehttp/r/CAP"
    assert urls_for("http://hub.test").private_url("CAP") == "http://hub.test/reversehttp/p/CAP"


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("alice.relay.test", "alice"),
        ("Alice.RELAY.test:8000", "alice"),  # case-insensitive, port ignored
        ("a-1.relay.test", "a-1"),
        ("relay.test", None),  # the domain itself is the main host
        ("a.alice.relay.test", None),  # nested
        ("-x.relay.test", None),  # not a DNS label
        ("a_b.relay.test", None),
        (".relay.test", None),
        ("alicerelay.test", None),
        ("alice.relay.test.evil", None),
        ("[::1]:8000", None),
        ("", None),
        (None, None),
    ],
)
def test_host_names(host, name):
    assert urls_for("http://hub.test").host_name(host) == name


def test_without_a_domain_no_host_is_a_name():
    assert urls_for("http://hub.test", domain=None).host_name("alice.relay.test") is None


def test_addresses_recognize_our_public_urls_only():
    host = urls_for("http://hub.test:8000")
    assert host.addresses("http://Alice.relay.test:8000/cb?x=1") == ("alice", "/cb?x=1")
    assert host.addresses("http://alice.relay.test:8000") == ("alice", "/")
    assert host.addresses("https://alice.relay.test:8000/cb") is None  # another scheme
    assert host.addresses("http://alice.relay.test/cb") is None  # another port
    assert host.addresses("http://a.b.relay.test:8000/cb") is None
    assert urls_for("https://hub.test").addresses("https://bob.relay.test:443/") == ("bob", "/")  # the default port
    assert urls_for("https://hub.test:443").addresses("https://bob.relay.test/") == ("bob", "/")
    assert host.addresses("http://hub.test:8000/relay/alice/cb") is None  # the main host serves no names
    path = urls_for("http://hub.test", domain=None)
    assert path.addresses("http://hub.test/relay/Alice/cb%20x?y=2") == ("alice", "/relay/Alice/cb%20x?y=2")
    assert path.addresses("http://hub.test/relay/alice") == ("alice", "/relay/alice")
    assert path.addresses("http://hub.test/hub") is None
    assert path.addresses("http://other.test/relay/alice/") is None
    assert path.addresses("http://hub.test:99999/relay/alice/") is None  # not a URL at all
    prefixed = urls_for("https://example.test/prefix", domain=None)
    assert prefixed.addresses("https://example.test/prefix/relay/bob/x") == ("bob", "/prefix/relay/bob/x")
    assert prefixed.addresses("https://example.test/relay/bob/x") is None


class Nowhere:
    """An outbound network side that is never reached in these tests."""

    async def request(self, method, url, **_):
        raise AssertionError(url)

    async def post(self, url, headers, body, timeout):
        raise AssertionError(url)


def test_the_hub_side_counts_host_based_names_as_ours():
    """What the composition root hands the hub (hub.netguard, the outbound seam) as a callable."""
    settings = Settings(public_url="http://hub.test", relay_domain=DOMAIN)
    is_own = own_urls(settings.public_origin, RelayUrls(settings).addresses)
    guard = NetGuard(settings, is_own)
    assert guard.is_own("http://hub.test/hub") and guard.is_own("http://alice.relay.test/cb")
    assert not guard.is_own("http://hub.test.evil/") and not guard.is_own("http://a.b.relay.test/")
    assert not NetGuard(settings).is_own("http://alice.relay.test/cb")
    outbound = OwnRelay(Starlette(), is_own, Nowhere())
    assert outbound.is_own("http://Alice.relay.test/cb") and outbound.is_own("http://hub.test/x")
    assert not outbound.is_own("https://alice.relay.test/cb")


def test_find_classifies_by_host_first():
    urls = urls_for("http://hub.test")

    def scope(host: str, path: str) -> dict[str, object]:
        return {"type": "http", "path": path, "headers": [(b"host", host.encode())]}

    assert urls.find(scope("alice.relay.test", "/reversehttp")) == (
        Kind.PUBLIC,
        {"name": "alice", "path": "reversehttp"},
    )
    assert urls.find(scope("hub.test", "/reversehttp")) == (Kind.GATEWAY, {})
    assert urls.find(scope("hub.test", "/reversehttp/r/C")) == (Kind.REQUEST, {"cap": "C"})
    assert urls.find(scope("hub.test", "/reversehttp/p/C")) == (Kind.PRIVATE, {"cap": "C"})
    assert urls.find(scope("hub.test", "/relay/alice/x")) is None


@pytest.fixture
async def hosted(make_app):
    """The app with host-based names (public URL http://hub.test)."""
    return await make_app(relay_domain=DOMAIN)


async def test_registration_hands_out_the_host_based_url(hosted):
    app, client = hosted
    urls = await register(client, "alice")
    assert urls["related"] == "http://alice.relay.test/"
    assert urls["first"].startswith("http://hub.test/reversehttp/r/")
    assert urls["location"].startswith("http://hub.test/reversehttp/p/")
    described = await client.get(urls["location"], headers={"accept": "application/json"})
    assert described.json()["public_url"] == "http://alice.relay.test/"
    listing = await client.get("/reversehttp", headers={"accept": "application/json"})
    assert [n["public_url"] for n in listing.json()["names"]] == ["http://alice.relay.test/"]


async def test_round_trip_through_a_host_based_name(hosted):
    app, client = hosted
    urls = await register(client, "alice")
    result = {}

    async def requester():
        # Paths the main host serves itself (the hub, the dashboard) belong to the application here.
        result["r"] = await client.post("http://Alice.relay.test/hub?x=1", content=b"hi")

    async with anyio.create_task_group() as tg:
        tg.start_soon(requester)
        raw, _ = await serve_one(client, urls["first"], status=201, body=b"made", headers={"X-App": "yes"})
    request = parse_request(raw)
    assert raw.startswith(b"POST /hub?x=1 HTTP/1.1\r\n")
    assert (
        dict((k.lower(), v) for k, v in request.headers)["host"] == "alice.relay.test"
    )  # httpx writes the host lowercased
    assert request.body == b"hi"
    assert result["r"].status_code == 201 and result["r"].text == "made" and result["r"].headers["x-app"] == "yes"


async def test_main_host_serves_no_relay_paths(hosted):
    app, client = hosted
    await register(client, "alice")
    r = await client.get("/relay/alice/")
    assert r.status_code == 404
    assert "registration" not in r.text  # the router's 404, not the relay's "no such registration"
    # An unknown name is the relay's own 404; a host that is not a name is the main host.
    assert (await client.get("http://nobody.relay.test/x")).text == "no such registration\n"
    assert (await client.get("http://relay.test/healthz")).status_code == 200
    assert (await client.get("http://a.alice.relay.test/healthz")).status_code == 200
    assert (await client.get("http://alice.relay.test/healthz")).status_code == 504  # relayed: nobody polls


async def test_path_based_names_stay_the_default(make_app):
    app, client = await make_app()
    urls = await register(client, "alice")
    assert urls["related"] == "http://hub.test/relay/alice/"
    # A Host that would be a name with --relay-domain is just another spelling of the main host.
    assert (await client.get("http://alice.relay.test/healthz")).status_code == 200


async def test_rate_limits_count_host_based_requests_per_name(make_app):
    app, client = await make_app(relay_domain=DOMAIN, rate_limit=("relay:name=2",), rate_limit_exempt=())
    codes = [(await client.get(f"http://alice.relay.test/{i}")).status_code for i in range(2)]
    refused = await client.get("http://ALICE.relay.test:80/other")
    other = await client.get("http://bob.relay.test/")
    assert codes == [404, 404]
    assert refused.status_code == 429 and refused.text == "rate limit exceeded (relay per name)\n"
    assert other.status_code == 404


async def test_the_hub_reaches_host_based_callbacks_in_process(make_app):
    """Verification and delivery to a host-based callback stay in-process, and the SSRF guard lets
    them through although relay.test resolves nowhere."""
    app, client = await make_app(relay_domain=DOMAIN, allow_private_networks=False)
    urls = await register(client, "sub")
    callback = urls["related"] + "cb?id=7"
    topic = "http://hub.test/topic"
    seen: list[bytes] = []

    async def application() -> None:
        nxt = urls["first"]
        while True:
            r = await client.get(nxt)
            if r.status_code == 204:
                continue
            seen.append(r.content)
            query = dict(parse_qsl(urlsplit(parse_request(r.content).target).query))
            body = query.get("hub.challenge", "").encode()
            reply = serialize_response(HttpResponse(200, [("Content-Type", "text/plain")], body, "OK"))
            assert (await client.post(nxt, content=reply, headers={"content-type": "message/http"})).status_code == 202
            nxt = links(r)["next"]

    async def active() -> bool:
        async with app.state.services.sessions() as session:
            state = await session.scalar(select(Subscription.state).where(Subscription.callback == callback))
        return state == "active"

    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))  # a trusted network: fat pings
    async with anyio.create_task_group() as tg, httpx.AsyncClient(transport=transport, base_url=PUBLIC) as local:
        tg.start_soon(application)
        form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
        assert (await client.post("/hub", data=form)).status_code == 202
        await wait_for(active)
        published = await local.post(
            "/publish", params={"hub.topic": topic}, content=b"news", headers={"content-type": "text/plain"}
        )
        assert published.status_code < 300, published.text
        await wait_for(lambda: len(seen) == 2)
        tg.cancel_scope.cancel()
    verification, delivery = (parse_request(raw) for raw in seen)
    assert verification.method == "GET" and verification.target.startswith("/cb?id=7&hub.mode=subscribe")
    assert delivery.method == "POST" and delivery.target == "/cb?id=7" and delivery.body == b"news"
    assert dict((k.lower(), v) for k, v in delivery.headers)["host"] == "sub.relay.test"


def test_settings_carry_the_domain():
    assert replace(Settings(), relay_domain="relay.test").relay_domain == "relay.test"


def test_the_flag_and_its_variable_take_a_dns_name_only():
    from click.testing import CliRunner

    from reversehub.server.cli import _domain, main

    assert _domain(None, None, " Relay.Example.COM. ") == "relay.example.com"  # type: ignore[arg-type]
    assert _domain(None, None, None) is None  # type: ignore[arg-type]
    bad = CliRunner().invoke(main, ["serve", "--relay-domain", "a_b.test"])
    assert bad.exit_code == 2 and "is not a DNS name" in bad.output
    from_env = CliRunner().invoke(main, ["serve"], env={"REVERSEHUB_RELAY_DOMAIN": "x..test"})
    assert from_env.exit_code == 2 and "is not a DNS name" in from_env.output
