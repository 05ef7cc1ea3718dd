"""Fair limits (issue 13: H4, M1, M4's login throttle): no client spends what others share.

Budgets per name are each client's own; IPv6 clients count per /64; a host counts once however it
is spelled; a ping costs one per topic; one client holds a bounded share of the relay's names;
guesses at the admin token are throttled. Topic rows (M6): tests/hub/test_topic_rows.py.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
import pytest

from reversehub.core.limits import client_key
from reversehub.server.app import create_admin_app
from tests.test_ratelimit import OTHER, limited
from tests.test_security import client_for

pytestmark = pytest.mark.anyio

ATTACKER = ("198.51.100.66", 4000)
ADMIN_TOKEN = "admin-s3cret"


def ping(*topics: str) -> dict[str, list[str] | str]:
    return {"hub.mode": "publish", "hub.url": list(topics)}


def sub(callback: str, topic: str = "https://t.example/feed") -> dict[str, str]:
    return {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}


# Budgets per name are per client -------------------------------------------------------------------
async def test_a_client_cannot_spend_a_topics_budget_for_its_publisher(make_app):
    app, publisher = await limited(make_app, "publish:topic=3")
    async with client_for(app, ATTACKER) as attacker:
        flood = [(await attacker.post("/publish", data=ping("https://t.example/feed"))).status_code for _ in range(5)]
        own = await publisher.post("/publish", data=ping("https://t.example/feed"))
    assert flood == [204, 204, 204, 429, 429]
    assert own.status_code == 204


async def test_a_client_cannot_spend_a_names_budget_for_its_owner(make_app):
    app, owner = await limited(make_app, "registration:name=3")
    claim = {"name": "shop", "token": "owner-token"}
    assert (await owner.post("/reversehttp", data=claim)).status_code == 201
    async with client_for(app, ATTACKER) as attacker:
        guesses = [
            (await attacker.post("/reversehttp", data={"name": "Shop", "token": f"guess{i}"})).status_code
            for i in range(4)
        ]
    refresh = await owner.post("/reversehttp", data=claim)
    assert guesses == [403, 403, 403, 429]
    assert refresh.status_code == 204


async def test_a_client_cannot_spend_the_budget_of_subscribers_on_our_relay(make_app):
    app, honest = await limited(make_app, "subscribe:callback-host=2")
    origin = app.state.settings.public_origin
    async with client_for(app, ATTACKER) as attacker:
        flood = [(await attacker.post("/hub", data=sub(f"{origin}/relay/spam/{i}"))).status_code for i in range(3)]
        # The same client, another relay name: each name is a callback host of its own.
        other_name = await attacker.post("/hub", data=sub(f"{origin}/relay/spam2/x"))
    victim = await honest.post("/hub", data=sub(f"{origin}/relay/victim/cb"))
    assert flood == [202, 202, 429]
    assert other_name.status_code == 202
    assert victim.status_code == 202


async def test_a_client_cannot_spend_a_relay_names_budget_for_its_requesters(make_app):
    app, requester = await limited(make_app, "relay:name=2")
    async with client_for(app, ATTACKER) as attacker:
        flood = [(await attacker.get(f"/relay/shop/{i}")).status_code for i in range(3)]
    mine = await requester.get("/relay/shop/")
    assert flood == [404, 404, 429]
    assert mine.status_code == 404 and mine.text == "no such registration\n"  # the relay's answer, no limit


# Who a client is, what a host is --------------------------------------------------------------------
def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4():
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.7") == client_key("203.0.113.7") == "203.0.113.7"
    assert client_key(None) == "-" and client_key("unix-socket") == "unix-socket"


async def test_one_ipv6_64_shares_one_budget(make_app):
    app, _ = await limited(make_app, "publish=2")
    async with (
        client_for(app, ("2001:db8:1:2::1", 1)) as one,
        client_for(app, ("2001:db8:1:2::beef", 2)) as same_64,
        client_for(app, ("2001:db8:1:3::1", 3)) as next_64,
    ):
        codes = [(await c.post("/publish", data=ping("https://t.example/a"))).status_code for c in (one, same_64, one)]
        other = await next_64.post("/publish", data=ping("https://t.example/a"))
    assert codes == [204, 204, 429]
    assert other.status_code == 204


async def test_callback_host_budget_counts_one_host_however_it_is_spelled(make_app):
    _, c = await limited(make_app, "subscribe:callback-host=4")
    callbacks = [
        "http://127.1/a",
        "http://2130706433/b",
        "http://0x7f000001/c",
        "http://localhost./d",
        "http://127.0.0.1/e",
    ]
    codes = [(await c.post("/hub", data=sub(cb))).status_code for cb in callbacks]
    assert codes == [202, 202, 202, 202, 429]


# A ping costs what it makes the hub do -----------------------------------------------------------
async def test_a_ping_costs_one_per_topic_against_the_clients_publish_budget(make_app):
    app, c = await limited(make_app, "publish=5")
    many = await c.post("/publish", data=ping(*(f"https://t.example/{i}" for i in range(4))))
    over = await c.post("/hub", data=ping("https://t.example/x", "https://t.example/y"))
    async with client_for(app, OTHER) as other:
        elsewhere = await other.post("/publish", data=ping("https://t.example/x"))
    assert many.status_code == 204
    assert over.status_code == 429 and "publish per client" in over.text
    assert elsewhere.status_code == 204


# A client's share of the caps ----------------------------------------------------------------------
async def test_one_client_holds_only_its_share_of_the_relays_names(make_app):
    app, c = await limited(
        make_app, max_registrations=100, max_registrations_per_client=2, rate_limit_exempt=("127.0.0.0/8",)
    )
    codes = [(await c.post("/reversehttp", data={"name": f"mine{i}", "token": "t"})).status_code for i in range(3)]
    refresh = await c.post("/reversehttp", data={"name": "mine0", "token": "t"})
    async with client_for(app, OTHER) as other, client_for(app, ("127.0.0.1", 9)) as local:
        theirs = await other.post("/reversehttp", data={"name": "theirs"})
        exempt = [(await local.post("/reversehttp", data={"name": f"local{i}"})).status_code for i in range(3)]
    assert codes == [201, 201, 403]
    assert (await c.post("/reversehttp", data={"name": "mine9"})).text == "too many registrations from this client\n"
    assert refresh.status_code == 204  # a refresh is not one more
    assert theirs.status_code == 201
    assert exempt == [201, 201, 201]


async def test_a_clients_share_frees_when_its_names_go(make_app):
    app, c = await limited(make_app, max_registrations_per_client=1)
    r = await c.post("/reversehttp", data={"name": "first"})
    assert r.status_code == 201
    assert (await c.post("/reversehttp", data={"name": "second"})).status_code == 403
    assert (await c.delete(r.headers["location"])).status_code == 204
    assert (await c.post("/reversehttp", data={"name": "second"})).status_code == 201


# Guessing the admin token ---------------------------------------------------------------------------
@pytest.fixture
async def admin_for(make_app):
    """``admin(client_address)``: a client on the admin app of a main app with an admin token."""
    async with AsyncExitStack() as stack:
        app, _ = await limited(make_app, admin_token=ADMIN_TOKEN)

        async def admin(address: tuple[str, int]) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=create_admin_app(app), client=address)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001")
            )

        yield admin


async def test_logins_are_throttled_per_client(admin_for):
    attacker, admin = await admin_for(ATTACKER), await admin_for(OTHER)
    guesses = [(await attacker.post("/dashboard/login", data={"token": f"g{i}"})).status_code for i in range(12)]
    right_but_spent = await attacker.post("/dashboard/login", data={"token": ADMIN_TOKEN})
    mine = await admin.post("/dashboard/login", data={"token": ADMIN_TOKEN})
    assert guesses == [401] * 10 + [429] * 2
    assert right_but_spent.status_code == 429 and 1 <= int(right_but_spent.headers["retry-after"]) <= 60
    assert mine.status_code == 200 and mine.json()["session"]


async def test_wrong_bearer_credentials_spend_the_login_budget(admin_for):
    attacker, admin = await admin_for(ATTACKER), await admin_for(OTHER)
    guesses = [
        (await attacker.get("/dashboard/api/state", headers={"Authorization": f"Bearer g{i}"})).status_code
        for i in range(11)
    ]
    login = await attacker.post("/dashboard/login", data={"token": ADMIN_TOKEN})
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    many = [(await admin.get("/dashboard/api/state", headers=right)).status_code for _ in range(15)]
    assert guesses == [401] * 10 + [429]
    assert login.status_code == 429
    assert many == [200] * 15  # a right credential costs nothing


def test_the_share_is_a_setting_with_a_flag():
    from reversehub.core import policy
    from reversehub.core.settings import Settings
    from tests.test_security import parse_serve

    assert policy.check_registration_share(Settings(max_registrations_per_client=2), 1) is None
    assert policy.check_registration_share(Settings(max_registrations_per_client=2), 2) == (
        "too many registrations from this client"
    )
    assert policy.check_registration_share(Settings(max_registrations_per_client=0), 10**9) is None
    code, made, _ = parse_serve(["--max-registrations-per-client", "5"])
    assert code == 0 and made is not None and made.max_registrations_per_client == 5
    code, made, _ = parse_serve([], env={"REVERSEHUB_MAX_REGISTRATIONS_PER_CLIENT": "7"})
    assert code == 0 and made is not None and made.max_registrations_per_client == 7
    code, made, _ = parse_serve(["--rate-limit", "login=3"])
    assert code == 0 and made is not None and made.rate_limit == ("login=3",)
