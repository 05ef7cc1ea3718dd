"""Access control (issue 6): tokens kept hashed, registration/publish authorization, policy, caps.

The middleware is tested over a small echo app (so each test also proves the body it had to read
reaches the app intact), and once inside the real app to show it is installed.
"""

from __future__ import annotations

import base64
import dataclasses
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from reversehub.core import policy
from reversehub.core.broker.memory import MemoryBroker
from reversehub.core.settings import Settings, token_digest
from reversehub.server.ratelimit import RateLimitMiddleware
from reversehub.server.security import SecurityMiddleware, presented_token, token_matches

pytestmark = pytest.mark.anyio

UNTRUSTED = ("203.0.113.7", 4711)
LOOPBACK = ("127.0.0.1", 5555)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def echo(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(f"app got {request.method} {request.url.path} {body.decode()}")


def echo_app(settings: Settings) -> Starlette:
    """The guarded paths, answered by an app that echoes what reached it; both middlewares on."""
    paths = ["/reversehttp", "/publish", "/hub", "/reversehttp/r/{cap}", "/relay/{name}/{rest:path}"]
    app = Starlette(
        routes=[Route(p, echo, methods=["GET", "POST", "PUT", "DELETE"]) for p in paths],
        middleware=[
            Middleware(RateLimitMiddleware, settings=settings),
            Middleware(SecurityMiddleware, settings=settings),
        ],
    )
    app.state.settings = settings
    app.state.services = SimpleNamespace(broker=MemoryBroker(), metrics=CollectorRegistry())
    return app


def client_for(app: Starlette, client: tuple[str, int] = UNTRUSTED, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=client), base_url="http://hub.test", **kwargs
    )


def guarded(**overrides: object) -> Settings:
    return dataclasses.replace(Settings(), **overrides)  # type: ignore[arg-type]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


BEARER = {"Authorization": "Bearer s3cret"}


# Tokens are kept hashed -------------------------------------------------------------------------
def test_settings_keep_only_digests():
    s = Settings(admin_token="s3cret", publish_token="p", topic_token=("https://a/*=t",), reserve_name=("alice=x",))
    assert s.admin_token == token_digest("s3cret") and s.admin_token.startswith("sha256:")
    assert "s3cret" not in repr(s)
    assert s.topic_token == (f"https://a/*={token_digest('t')}",)
    # replace() passes digests back through __init__: they must not be hashed twice.
    assert dataclasses.replace(s, port=1).admin_token == s.admin_token
    # An operator may give the digest itself, so the plain token is nowhere on the server.
    assert Settings(admin_token=token_digest("s3cret")).admin_token == s.admin_token


def test_bad_token_pair_is_refused():
    with pytest.raises(ValueError):
        Settings(topic_token=("no-equals-sign",))


def test_token_matching():
    digest = token_digest("s3cret")
    assert token_matches("s3cret", digest)
    assert not token_matches("s3cre", digest)
    assert not token_matches(None, digest)
    assert not token_matches("s3cret", None)
    assert not token_matches(digest, digest)  # the digest is not a password


def test_presented_token():
    from starlette.datastructures import Headers

    assert presented_token(Headers({"authorization": "Bearer abc"})) == "abc"
    assert presented_token(Headers(basic("anyone", "pw:with:colons"))) == "pw:with:colons"
    assert presented_token(Headers({"authorization": "Basic !!notbase64"})) is None
    assert presented_token(Headers({"authorization": "Basic " + base64.b64encode(b"nocolon").decode()})) is None
    assert presented_token(Headers({"authorization": "Digest abc"})) is None
    assert presented_token(Headers({})) is None


# Registration ------------------------------------------------------------------------------------
async def test_registration_open_without_a_token():
    async with client_for(echo_app(guarded())) as c:
        r = await c.post("/reversehttp", data={"name": "alice", "token": "t"})
    assert r.status_code == 200 and r.text == "app got POST /reversehttp name=alice&token=t"


async def test_registration_token_required():
    async with client_for(echo_app(guarded(registration_token="s3cret"))) as c:
        missing = await c.post("/reversehttp", data={"name": "alice"})
        wrong = await c.post("/reversehttp", data={"name": "alice"}, headers={"Authorization": "Bearer nope"})
        bearer = await c.post("/reversehttp", data={"name": "alice"}, headers=BEARER)
        via_basic = await c.post("/reversehttp", data={"name": "alice"}, headers=basic("alice", "s3cret"))
        poll = await c.get("/reversehttp/r/abc")  # only registration is guarded
    for r in (missing, wrong):
        assert r.status_code == 401
        assert "Bearer" in r.headers["www-authenticate"] and "Basic" in r.headers["www-authenticate"]
    assert bearer.text == via_basic.text == "app got POST /reversehttp name=alice"
    assert poll.status_code == 200


async def test_reserved_names_need_their_token():
    app = echo_app(guarded(reserve_name=("alice=mine", "team-*=ours")))
    async with client_for(app) as c:
        taken = await c.post("/reversehttp", data={"name": "Alice", "token": "guess"})
        no_token = await c.post("/reversehttp", data={"name": "team-red"})
        owner = await c.post("/reversehttp", data={"name": "alice", "token": "mine", "lease": "60"})
        other = await c.post("/reversehttp", data={"name": "bob", "token": "x"})
    assert taken.status_code == no_token.status_code == 403
    assert taken.text == "name reserved\n"
    assert owner.text == "app got POST /reversehttp name=alice&token=mine&lease=60"
    assert other.status_code == 200


async def test_listing_of_names_needs_the_admin_token_when_one_is_set(make_app):
    from reversehub.server.app import create_admin_app

    _, open_client = await make_app()
    assert (await open_client.get("/reversehttp")).status_code == 200
    app, main = await make_app(admin_token="adm")
    # With an admin, the list is an admin page: on the admin listener (reversehub.server.app.create_admin_app).
    assert (await main.get("/reversehttp", headers={"Authorization": "Bearer adm"})).status_code == 404
    transport = httpx.ASGITransport(app=create_admin_app(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as client:
        assert (await client.get("/reversehttp")).status_code == 401
        assert (await client.get("/reversehttp", headers={"Authorization": "Bearer nope"})).status_code == 401
        headers = {"Authorization": "Bearer adm", "Accept": "application/json"}
        listing = await client.get("/reversehttp", headers=headers)
        assert listing.status_code == 200 and listing.json()["registrations"] == 0


# Publish -----------------------------------------------------------------------------------------
async def test_without_publish_token_pings_are_open_and_fat_pings_trusted_only():
    app = echo_app(guarded())
    async with client_for(app) as outside, client_for(app, LOOPBACK) as local:
        ping = await outside.post("/publish", data={"hub.mode": "publish", "hub.url": "https://t/feed"})
        hub_ping = await outside.post("/hub", data={"hub.mode": "publish", "hub.url": "https://t/feed"})
        fat = await outside.post("/publish?hub.topic=https://t/feed", content=b"<feed/>")
        fat_local = await local.post("/publish?hub.topic=https://t/feed", content=b"<feed/>")
    assert ping.status_code == hub_ping.status_code == 200
    assert fat.status_code == 403 and "trusted networks" in fat.text
    assert fat_local.text == "app got POST /publish <feed/>"


async def test_trusted_networks_are_configurable():
    app = echo_app(guarded(trusted_networks=("203.0.113.0/24",)))
    async with client_for(app) as c, client_for(app, LOOPBACK) as local:
        assert (await c.post("/publish?hub.topic=https://t/f", content=b"x")).status_code == 200
        assert (await local.post("/publish?hub.topic=https://t/f", content=b"x")).status_code == 403


async def test_publish_token_guards_every_way_to_publish():
    app = echo_app(guarded(publish_token="s3cret"))
    ping = {"hub.mode": "publish", "hub.url": "https://t/feed"}
    async with client_for(app) as c, client_for(app, LOOPBACK) as local:
        refused = [
            await c.post("/publish", data=ping),
            await c.post("/hub", data=ping),
            await c.post("/publish?hub.topic=https://t/feed", content=b"x"),
            await local.post(
                "/publish?hub.topic=https://t/feed", content=b"x"
            ),  # trust needs no token only without one
        ]
        allowed = [
            await c.post("/publish", data=ping, headers=BEARER),
            await c.post("/hub", data=ping, headers=basic("pub", "s3cret")),
            await c.post("/publish?hub.topic=https://t/feed", content=b"x", headers=BEARER),
        ]
        subscribe = await c.post("/hub", data={"hub.mode": "subscribe", "hub.topic": "t", "hub.callback": "c"})
    assert [r.status_code for r in refused] == [401] * 4
    assert all(r.headers["www-authenticate"].startswith("Bearer") for r in refused)
    assert [r.status_code for r in allowed] == [200] * 3
    assert allowed[1].text == "app got POST /hub hub.mode=publish&hub.url=https%3A%2F%2Ft%2Ffeed"
    assert subscribe.status_code == 200


async def test_topic_tokens():
    app = echo_app(guarded(topic_token=("https://a.example/*=alpha",)))
    async with client_for(app) as c:
        own = await c.post("/publish", data={"hub.mode": "publish", "hub.url": "https://a.example/f"})
        own_ok = await c.post(
            "/publish", data={"hub.mode": "publish", "hub.url": "https://a.example/f"}, headers=basic("", "alpha")
        )
        mixed = await c.post(
            "/publish",
            data={"hub.mode": "publish", "hub.url": ["https://a.example/f", "https://b.example/f"]},
            headers={"Authorization": "Bearer alpha"},
        )
        other = await c.post("/hub", data={"hub.mode": "publish", "hub.url": "https://b.example/f"})
        fat = await c.post(
            "/publish?hub.topic=https://a.example/f", content=b"x", headers={"Authorization": "Bearer alpha"}
        )
    assert own.status_code == 401
    assert own_ok.status_code == mixed.status_code == other.status_code == fat.status_code == 200


# The middleware must read a request exactly as the relay and the hub do: any difference is a bypass.
async def test_hub_reads_any_body_as_a_form(make_app):
    _, client = await make_app(publish_token="s3cret")
    ping = b"hub.mode=publish&hub.url=http%3A%2F%2Ft.test%2Ffeed"
    for content_type in (None, "text/plain", "application/octet-stream"):
        headers = {"Content-Type": content_type} if content_type else {}
        assert (await client.post("/hub", content=ping, headers=headers)).status_code == 401, content_type
    ok = await client.post("/hub", content=ping, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 204  # the hub took it as a ping


async def test_the_last_hub_mode_counts(make_app):
    _, client = await make_app(publish_token="s3cret")
    r = await client.post("/hub", data={"hub.mode": ["subscribe", "publish"], "hub.url": "http://t.test/feed"})
    assert r.status_code == 401


async def test_every_way_to_name_a_ping_topic(make_app):
    _, client = await make_app(topic_token=("http://t.test/*=t1",))
    for key in ("hub.url", "hub.url[]", "hub.topic"):
        r = await client.post("/publish", data={"hub.mode": "publish", key: "http://t.test/feed"})
        assert r.status_code == 401, key


async def test_a_form_typed_body_that_is_no_ping_is_a_fat_ping(make_app):
    """The hub distributes a form-typed body that names no hub.url as content: the fat-ping rule applies."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    _, outside = await make_app()
    r = await outside.post("/publish?hub.topic=http://t.test/feed", content=b"a=b", headers=form)
    assert r.status_code == 403 and "trusted networks" in r.text
    _, trusted = await make_app(trusted_networks=("0.0.0.0/0",))
    r = await trusted.post("/publish?hub.topic=http://t.test/feed", content=b"a=b", headers=form)
    assert r.status_code == 204


async def test_too_many_fields_are_refused_not_skipped(make_app):
    _, client = await make_app(publish_token="s3cret")
    body = "&".join(f"x{i}=1" for i in range(1200)) + "&hub.mode=publish&hub.url=http%3A%2F%2Ft.test%2F"
    r = await client.post("/hub", content=body.encode(), headers=FORM)
    assert r.status_code == 400


async def test_reserved_names_whatever_the_content_type_and_the_last_name(make_app):
    _, client = await make_app(reserve_name=("alice=mine",))
    r = await client.post("/reversehttp", content=b"name=alice&token=guess")
    assert r.status_code == 403
    r = await client.post("/reversehttp", data={"name": ["bob", "alice"], "token": "guess"})
    assert r.status_code == 403
    r = await client.post("/reversehttp", data={"name": "alice", "token": ["guess", "mine"]})
    assert r.status_code == 201


async def test_form_body_too_large():
    app = echo_app(guarded(publish_token="s3cret", max_form_size=100))
    async with client_for(app) as c:
        r = await c.post("/hub", data={"hub.mode": "publish", "hub.url": "x" * 200})
    assert r.status_code == 413


async def test_installed_in_the_app(make_app):
    _, client = await make_app(registration_token="s3cret", publish_token="p")
    assert (await client.post("/reversehttp", data={"name": "alice"})).status_code == 401
    assert (await client.post("/publish", data={"hub.mode": "publish", "hub.url": "https://t/"})).status_code == 401
    assert (await client.get("/healthz")).status_code == 200


# Subscriber policy and caps ----------------------------------------------------------------------
def test_policy_open_by_default():
    assert policy.check_subscription(Settings(), "https://any/feed", "https://cb/x") is None


def test_policy_deny_and_allow_lists():
    s = Settings(
        allow_topic=("https://news.example/*", "re:https://blog\\.example/(atom|rss)"),
        deny_topic=("https://news.example/private/*",),
        deny_callback=("http://*", "*://169.254.*"),
    )
    assert policy.check_subscription(s, "https://news.example/feed", "https://cb.example/1") is None
    assert policy.check_subscription(s, "https://blog.example/rss", "https://cb.example/1") is None
    assert (
        policy.check_subscription(s, "https://blog.example/rss2", "https://cb.example/1")
        == "topic not allowed on this hub"
    )
    assert (
        policy.check_subscription(s, "https://news.example/private/x", "https://cb/1")
        == "topic not allowed on this hub"
    )
    assert policy.check_subscription(s, "https://other.example/", "https://cb/1") == "topic not allowed on this hub"
    assert policy.check_subscription(s, "https://news.example/f", "http://cb/1") == "callback not allowed on this hub"
    assert policy.check_subscription(s, "https://news.example/f", "https://169.254.169.254/") == (
        "callback not allowed on this hub"
    )


def test_policy_callback_allow_list():
    s = Settings(allow_callback=("https://hooks.example/*",))
    assert policy.check_subscription(s, "t", "https://hooks.example/a") is None
    assert policy.check_subscription(s, "t", "https://evil.example/a") == "callback not allowed on this hub"


def test_bad_patterns_are_found_at_start():
    policy.validate_patterns(["https://*", "re:^a+$"])
    with pytest.raises(ValueError, match="bad pattern"):
        policy.validate_patterns(["re:(unclosed"])


def test_caps():
    s = Settings(max_registrations=2, max_subscriptions_per_callback_host=3, max_pending_per_subscription=1)
    assert policy.check_registration_cap(s, 1) is None
    assert policy.check_registration_cap(s, 2) == "too many registrations on this relay"
    assert policy.check_callback_host_cap(s, 2) is None
    assert policy.check_callback_host_cap(s, 3) == "too many subscriptions for this callback host"
    off = Settings(max_registrations=0, max_subscriptions_per_callback_host=0, max_pending_per_subscription=0)
    assert policy.check_registration_cap(off, 10**9) is None
    assert policy.check_callback_host_cap(off, 10**9) is None


# The command line --------------------------------------------------------------------------------
def parse_serve(args: list[str], env: dict[str, str] | None = None) -> tuple[int, Settings | None, str]:
    """Run the serve flags (and their REVERSEHUB_* variables) through click, without serving."""
    import click
    from click.testing import CliRunner

    from reversehub.server.cli import serve_options, settings_from

    made: list[Settings] = []

    @click.command()
    @serve_options
    def probe(**options: object) -> None:
        made.append(settings_from(options))

    result = CliRunner().invoke(probe, args, env=env or {})
    return result.exit_code, made[0] if made else None, result.output


def test_security_flags_and_variables():
    code, s, output = parse_serve(
        ["--rate-limit", "publish=5,poll=0", "--rate-limit", "relay:name=7", "--deny-callback", "http://*"],
        env={
            "REVERSEHUB_ADMIN_TOKEN": "s3cret",
            "REVERSEHUB_TRUSTED_NETWORKS": "10.0.0.0/8,192.0.2.1",
            "REVERSEHUB_TOPIC_TOKEN": "https://a/*=t1",
        },
    )
    assert code == 0, output
    assert s is not None
    assert s.admin_token == token_digest("s3cret")
    assert s.rate_limit == ("publish=5", "poll=0", "relay:name=7")
    assert s.trusted_networks == ("10.0.0.0/8", "192.0.2.1")
    assert s.topic_token == (f"https://a/*={token_digest('t1')}",)
    assert s.deny_callback == ("http://*",)
    code, defaults, _ = parse_serve([])
    assert defaults == Settings()


def test_bad_security_flags_are_usage_errors():
    for args in (
        ["--rate-limit", "pubish=5"],
        ["--trusted-networks", "10.0.0.0/33"],
        ["--allow-topic", "re:(unclosed"],
        ["--reserve-name", "alice"],
    ):
        code, s, output = parse_serve(args)
        assert code == 2 and s is None and "Invalid value" in output, args
