"""Subscribing, in the spirit of the websub.rocks hub tests 100-104, and the rules around it."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from hub import store
from tests.hub.conftest import SUB, subscribe
from tests.hub.peers import form
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/topic"


async def fat_ping(client, topic=TOPIC, body=b"hello", content_type="text/plain"):
    r = await client.post(f"/publish?hub.topic={topic}", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 204, r.text
    return r


async def sub_row(app, topic, callback):
    return await store.find(app.state.hub.services.sessions, topic, callback)


async def test_100_typical_subscriber_request(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb")
    (v,) = peer.verified("/cb")
    assert v["hub.topic"] == TOPIC and v["hub.lease_seconds"] == str(10 * 24 * 3600) and v["hub.challenge"]
    await fat_ping(client)
    await wait_for(lambda: bool(peer.to("/cb")))
    (d,) = peer.to("/cb")
    assert d.body == b"hello"
    assert d.headers["content-type"] == "text/plain"
    assert d.headers["link"] == f'<http://hub.test/hub>; rel="hub", <{TOPIC}>; rel="self"'
    assert "x-hub-signature" not in d.headers and "webhook-signature" not in d.headers
    assert d.headers["x-hub-sequence"] == "1"
    assert d.headers["webhook-id"] and abs(int(d.headers["webhook-timestamp"]) - time.time()) < 60


async def test_101_secret_signs_deliveries(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="s3cret")
    await fat_ping(client, body=b"signed body")
    await wait_for(lambda: bool(peer.to("/cb")))
    (d,) = peer.to("/cb")
    expected = hmac.new(b"s3cret", b"signed body", hashlib.sha256).hexdigest()
    assert d.headers["x-hub-signature"] == f"sha256={expected}"
    import base64

    signed = f"{d.headers['webhook-id']}.{d.headers['webhook-timestamp']}.".encode() + b"signed body"
    mac = base64.b64encode(hmac.new(b"s3cret", signed, hashlib.sha256).digest()).decode()
    assert d.headers["webhook-signature"] == f"v1,{mac}"


@pytest.mark.parametrize("algorithm", ["sha1", "sha384", "sha512"])
async def test_signature_algorithm_is_configurable(make_hub, peer, algorithm):
    app, client = await make_hub(signature_algorithm=algorithm)
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="k")
    await fat_ping(client, body=b"x")
    await wait_for(lambda: bool(peer.to("/cb")))
    assert peer.to("/cb")[0].headers["x-hub-signature"] == f"{algorithm}=" + hmac.new(b"k", b"x", algorithm).hexdigest()


async def test_102_unknown_parameters_are_ignored_and_callback_query_kept(hub, peer):
    app, client = hub
    callback = SUB + "/cb?user=7&x=a%20b"
    data = form(mode="subscribe", topic=TOPIC, callback=callback)
    data["foo"] = "bar"
    data["hub.extra"] = "1"
    r = await client.post("/hub", data=data)
    assert r.status_code == 202
    await wait_for(lambda: bool(peer.verified("/cb")))
    v = peer.verified("/cb")[0]
    assert v["user"] == "7" and v["x"] == "a b" and "foo" not in v
    await wait_for(lambda: sub_row(app, TOPIC, callback))
    await fat_ping(client)
    await wait_for(lambda: bool(peer.to("/cb")))
    assert peer.to("/cb")[0].query == "user=7&x=a%20b"  # the exact callback URL


async def test_103_resubscribe_renews_and_delivers_once(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", lease_seconds=3600)
    first = await sub_row(app, TOPIC, SUB + "/cb")
    await subscribe(client, peer, TOPIC, SUB + "/cb", lease_seconds=7200)
    renewed = await sub_row(app, TOPIC, SUB + "/cb")
    assert renewed.id == first.id and renewed.lease_seconds == 7200 and renewed.expires_at > first.expires_at
    await fat_ping(client)
    await wait_for(lambda: bool(peer.to("/cb")))
    await fat_ping(client, body=b"second")
    await wait_for(lambda: len(peer.to("/cb")) == 2)
    assert [d.body for d in peer.to("/cb")] == [b"hello", b"second"]


async def test_failed_resubscribe_keeps_the_old_subscription(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="old", lease_seconds=3600)
    before = await sub_row(app, TOPIC, SUB + "/cb")
    peer.verify_answer["/cb"] = lambda params: (200, "not the challenge")
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=SUB + "/cb", secret="new"))
    assert r.status_code == 202
    await wait_for(lambda: len(peer.verified("/cb")) == 2)
    await fat_ping(client, body=b"b")
    await wait_for(lambda: bool(peer.to("/cb")))
    after = await sub_row(app, TOPIC, SUB + "/cb")
    assert (after.secret, after.lease_seconds, after.expires_at) == ("old", 3600, before.expires_at)
    assert peer.to("/cb")[0].headers["x-hub-signature"] == "sha256=" + hmac.new(b"old", b"b", "sha256").hexdigest()


@pytest.mark.parametrize(
    "answer",
    [
        (200, "wrong"),
        (500, "CHALLENGE"),
        (404, "CHALLENGE"),
        (200, "CHALLENGE\n"),
    ],
)
async def test_verification_needs_2xx_and_exactly_the_challenge(hub, peer, answer):
    app, client = hub
    status, body = answer
    peer.verify_answer["/cb"] = lambda p: (status, body.replace("CHALLENGE", p["hub.challenge"]))
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=SUB + "/cb"))
    assert r.status_code == 202  # the answer never depends on verification
    await wait_for(lambda: bool(peer.verified("/cb")))
    await fat_ping(client)
    assert await sub_row(app, TOPIC, SUB + "/cb") is None


async def test_any_2xx_with_the_challenge_verifies(hub, peer):
    app, client = hub
    peer.verify_answer["/cb"] = lambda p: (201, p["hub.challenge"])
    await subscribe(client, peer, TOPIC, SUB + "/cb")


async def test_104_unsubscribe_takes_effect_once_verified(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/a")
    await subscribe(client, peer, TOPIC, SUB + "/b")
    peer.verify_answer["/b"] = lambda p: (404, "")  # b did not ask: its unsubscribe is not confirmed
    for path in ("/a", "/b"):
        r = await client.post("/hub", data=form(mode="unsubscribe", topic=TOPIC, callback=SUB + path))
        assert r.status_code == 202
    await wait_for(lambda: bool(peer.verified("/a", "unsubscribe")) and bool(peer.verified("/b", "unsubscribe")))
    assert "hub.lease_seconds" not in peer.verified("/a", "unsubscribe")[0]
    await wait_for(lambda: _state(app, "/a", "unsubscribed"))
    await fat_ping(client)
    await wait_for(lambda: bool(peer.to("/b")))
    assert peer.to("/a") == []
    assert (await sub_row(app, TOPIC, SUB + "/b")).state == "active"


async def _state(app, path, state):
    row = await sub_row(app, TOPIC, SUB + path)
    return row is not None and row.state == state


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"hub.mode": "subscribe", "hub.topic": TOPIC}, "hub.callback is required"),
        ({"hub.mode": "subscribe", "hub.callback": SUB + "/cb"}, "hub.topic is required"),
        ({"hub.topic": TOPIC, "hub.callback": SUB + "/cb"}, "hub.mode"),
        ({"hub.mode": "follow", "hub.topic": TOPIC, "hub.callback": SUB + "/cb"}, "hub.mode"),
        ({"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": "ftp://x/cb"}, "http or https"),
        ({"hub.mode": "subscribe", "hub.topic": "/relative", "hub.callback": SUB + "/cb"}, "hub.topic"),
        ({"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": SUB + "/cb#frag"}, "fragment"),
        (
            {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": SUB + "/cb", "hub.lease_seconds": "x"},
            "integer",
        ),
        (
            {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": SUB + "/cb", "hub.lease_seconds": "-5"},
            "positive",
        ),
        (
            {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": SUB + "/cb", "hub.secret": "s" * 200},
            "200 bytes",
        ),
    ],
)
async def test_invalid_requests_are_400_with_a_reason(hub, peer, data, reason):
    _, client = hub
    r = await client.post("/hub", data=data)
    assert r.status_code == 400
    assert reason in r.text
    assert peer.verifications == []


async def test_secret_of_199_bytes_is_fine(hub, peer):
    _, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/cb", secret="s" * 199)


@pytest.mark.parametrize(("asked", "granted"), [(1, 60), (None, 864000), (10**9, 2592000), (3600, 3600)])
async def test_leases_are_clamped_into_bounds(hub, peer, asked, granted):
    app, client = hub
    extra = {} if asked is None else {"lease_seconds": asked}
    await subscribe(client, peer, TOPIC, SUB + "/cb", **extra)
    assert peer.verified("/cb")[0]["hub.lease_seconds"] == str(granted)
    row = await sub_row(app, TOPIC, SUB + "/cb")
    assert row.lease_seconds == granted
    assert row.expires_at == pytest.approx(row.verified_at + granted)


async def test_expired_subscriptions_stop_receiving_and_say_so(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/old", lease_seconds=60)
    await subscribe(client, peer, TOPIC, SUB + "/new", lease_seconds=3600)
    sessions = app.state.hub.services.sessions
    assert await store.expire_leases(sessions, time.time() + 61) == 1
    assert (await sub_row(app, TOPIC, SUB + "/old")).state == "expired"
    await fat_ping(client)
    await wait_for(lambda: bool(peer.to("/new")))
    assert peer.to("/old") == []
    # Renewing an expired pair revives the same row.
    await subscribe(client, peer, TOPIC, SUB + "/old")
    assert (await sub_row(app, TOPIC, SUB + "/old")).state == "active"


async def test_denied_topic_is_reported_to_the_callback(make_hub, peer):
    # Without --allow-private-networks a topic on loopback is not allowed: the hub says so (5.2).
    app, client = await make_hub(allow_private_networks=False)
    callback = "http://93.184.216.34/cb"  # a global address: the guard lets the callback through
    r = await client.post("/hub", data=form(mode="subscribe", topic="http://127.0.0.1/feed", callback=callback))
    assert r.status_code == 202
    await wait_for(lambda: bool(peer.verifications))
    (v,) = peer.verifications
    assert v["hub.mode"] == "denied" and v["hub.topic"] == "http://127.0.0.1/feed" and v["hub.reason"]
    assert await sub_row(app, "http://127.0.0.1/feed", callback) is None


async def test_callbacks_on_private_networks_are_refused(make_hub, peer):
    app, client = await make_hub(allow_private_networks=False)
    for callback in ("http://127.0.0.1:9/cb", "http://10.1.2.3/cb", "http://[::1]/cb", "http://169.254.169.254/"):
        r = await client.post("/hub", data=form(mode="subscribe", topic="http://93.184.216.34/t", callback=callback))
        assert r.status_code == 202
    # Our own public URLs (relay callbacks) are always allowed.
    r = await client.post(
        "/hub", data=form(mode="subscribe", topic="http://93.184.216.34/t", callback="http://hub.test/relay/x/cb")
    )
    assert r.status_code == 202
    await fat_ping(client, topic="http://93.184.216.34/t")
    assert peer.verifications == [] and peer.deliveries == []


async def test_policy_denies_topics_and_caps_callback_hosts(make_hub, peer):
    app, client = await make_hub(deny_topic=("*/private/*",), max_subscriptions_per_callback_host=2)
    r = await client.post("/hub", data=form(mode="subscribe", topic="http://pub.test/private/x", callback=SUB + "/p"))
    assert r.status_code == 202
    await wait_for(lambda: bool(peer.verifications))
    assert peer.verifications[0]["hub.mode"] == "denied" and "topic not allowed" in peer.verifications[0]["hub.reason"]
    await subscribe(client, peer, TOPIC, SUB + "/1")
    await subscribe(client, peer, TOPIC, SUB + "/2")
    await subscribe(client, peer, TOPIC, SUB + "/2")  # a renewal is not one more
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback=SUB + "/3"))
    await wait_for(lambda: bool(peer.verified("/3", "denied")))
    assert "too many subscriptions" in peer.verified("/3", "denied")[0]["hub.reason"]


def test_the_host_cap_counts_one_host_however_its_url_spells_it():
    from hub.store import host_of

    assert host_of("http://Sub.Example:8080/cb?x=1") == host_of("https://sub.example/other") == "sub.example"
    assert host_of("http://bücher.example/") == host_of("http://xn--bcher-kva.example/") == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "path",
    [
        "/relay/victim/../attacker/x?hub.mode=1",  # verified at attacker's name, delivered to victim's
        "/relay/victim/%2e%2e/attacker/x",
        "/relay/victim/%2E%2e/attacker/x",
        "/relay/victim/./x",
        "/relay/victim/.%2e/x",
        "/relay/victim/x/..",
        "/relay/victim/x/.",
        "/relay/victim\\..\\attacker/x",
        "/relay/victim/caf\u00e9/x",
        "/relay/victim/a b",
    ],
)
async def test_a_callback_with_more_than_one_reading_is_refused(hub, peer, path):
    """A callback the verification GET and the delivery POST could read differently (dot segments,
    which an HTTP client may remove and a server may not; characters a client re-encodes) would let
    one party consent for another's URL: refused with 400, before any request is made."""
    app, client = hub
    r = await client.post("/hub", data=form(mode="subscribe", topic=TOPIC, callback="http://hub.test" + path))
    assert r.status_code == 400, (path, r.status_code)
    assert "hub.callback" in r.text
    assert peer.verifications == []


async def test_a_plain_callback_with_dots_inside_segments_is_fine(hub, peer):
    app, client = hub
    await subscribe(client, peer, TOPIC, SUB + "/v1.2/..cb.")
    assert peer.verified("/v1.2/..cb.")
