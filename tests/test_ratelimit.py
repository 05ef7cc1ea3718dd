"""Rate limits (issue 6): per client and per client and name, 429 with Retry-After, counted in the broker.

The server's middleware counts per client from method and path; the hub's and the relay's handlers
count the names they parsed (topics, callback hosts, registered names). Both run in the real app here.
"""

from __future__ import annotations

import itertools
import uuid

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from hub.models import Subscription
from relay.routes import RelayUrls
from reversehub.core.broker import Broker
from reversehub.core.broker.memory import MemoryBroker
from reversehub.core.limits import DEFAULT_LIMITS, MAX_NAMES, Limits, parse_limits
from reversehub.core.settings import Settings
from reversehub.server.ratelimit import classify
from tests.support import wait_for
from tests.test_security import LOOPBACK, NOWHERE, client_for

pytestmark = pytest.mark.anyio

OTHER = ("198.51.100.9", 1234)


async def limited(make_app, *limits: str, broker: Broker | None = None, **overrides: object):
    """``app, client``: the real app with ``--rate-limit`` ``limits`` and no client exempt.

    Windows are fixed: an hour long unless a test says otherwise, so that the few requests of a test
    (each through the database) fall in one window and not on either side of a boundary.
    """
    overrides = {"rate_limit_exempt": (), "rate_limit_window": 3600.0, **overrides}
    return await make_app(transport=NOWHERE, broker=broker, rate_limit=limits, **overrides)


def test_parse_limits():
    assert parse_limits(()) == dict(DEFAULT_LIMITS)
    limits = parse_limits(("publish=5", "relay:name=0"))
    assert limits["publish"] == 5 and limits["relay:name"] == 0 and limits["poll"] == DEFAULT_LIMITS["poll"]
    with pytest.raises(ValueError, match="unknown rate limit"):
        parse_limits(("pubish=5",))
    with pytest.raises(ValueError, match="whole number"):
        parse_limits(("publish=lots",))


def test_the_middleware_classifies_by_method_host_and_path_alone():
    """No body is read before the handler: what a body says (hub.mode, a name, topics) is counted there."""
    urls = RelayUrls(Settings(public_url="http://hub.test", relay_domain="relay.test"))

    def kind(method: str, path: str, host: str = "hub.test") -> tuple[str | None, list[str]]:
        return classify({"method": method, "path": path, "headers": [(b"host", host.encode())]}, urls)

    assert kind("POST", "/reversehttp") == ("registration", [])
    assert kind("DELETE", "/reversehttp/p/cap") == ("registration", [])
    assert kind("POST", "/publish") == ("publish", [])
    assert kind("POST", "/hub") == (None, [])
    assert kind("GET", "/x", host="Alice.relay.test") == ("relay", ["name=alice"])
    poll, names = kind("GET", "/reversehttp/r/secretcap")
    assert poll == "poll" and len(names) == 1 and "secretcap" not in names[0]
    assert kind("GET", "/healthz") == (None, [])


async def test_registration_per_client_with_retry_after(make_app):
    app, c = await limited(make_app, "registration=3", rate_limit_window=300.0)
    async with client_for(app, OTHER) as other:
        statuses = [(await c.post("/reversehttp", data={"name": f"n{i}"})).status_code for i in range(5)]
        refused = await c.post("/reversehttp", data={"name": "n9"})
        fine = await other.post("/reversehttp", data={"name": "x"})
    assert statuses == [201, 201, 201, 429, 429]
    assert refused.text == "rate limit exceeded (registration per client)\n"
    assert 1 <= int(refused.headers["retry-after"]) <= 300
    assert fine.status_code == 201


async def test_registration_per_name_per_client(make_app):
    """A name's budget is each client's own (issue 13, H4): b is not locked out by what a spent."""
    app, a = await limited(make_app, "registration:name=2")
    claim = {"name": "Alice", "token": "t"}
    async with client_for(app, OTHER) as b:
        first = [(await x.post("/reversehttp", data=claim)).status_code for x in (a, a)]
        third = await a.post("/reversehttp", data={**claim, "name": "alice"})  # names are case-insensitive
        other_name = await a.post("/reversehttp", data={"name": "bob"})
        other_client = await b.post("/reversehttp", data=claim)
    assert first == [201, 204]
    assert third.status_code == 429 and "per name" in third.text and int(third.headers["retry-after"]) >= 1
    assert other_name.status_code == 201
    assert other_client.status_code == 204


async def test_a_refused_registration_does_not_spend_the_names_budget(make_app):
    """Authorization comes first: a client refused a reserved name cannot lock its owner out."""
    _, c = await limited(make_app, "registration:name=2", reserve_name=("alice=mine",))
    refused = [(await c.post("/reversehttp", data={"name": "alice"})).status_code for _ in range(3)]
    owner = await c.post("/reversehttp", data={"name": "alice", "token": "mine"})
    assert refused == [403] * 3 and owner.status_code == 201


async def test_polls_limited_by_rate_per_registration(make_app):
    _, c = await limited(make_app, "poll=100", "poll:registration=2")
    same = [(await c.get("/reversehttp/r/capA")).status_code for _ in range(3)]
    other = await c.get("/reversehttp/r/capB")
    assert same == [404, 404, 429] and other.status_code == 404


async def test_publish_per_client_and_per_topic(make_app):
    app, c = await limited(make_app, "publish=4", "publish:topic=2")
    ping = {"hub.mode": "publish", "hub.url": "https://t/a"}
    async with client_for(app, OTHER) as other:
        a = [(await c.post("/publish", data=ping)).status_code for _ in range(2)]
        over_topic = await c.post("/hub", data=ping)  # the same client again: its budget for the topic is spent
        elsewhere = await other.post("/hub", data=ping)  # another client's budget for the topic is its own
        fat = await c.post("/publish?hub.topic=https://t/b", content=b"x", headers={"Content-Type": "text/plain"})
        over_client = await c.post("/publish?hub.topic=https://t/c", content=b"x")
    assert a == [204, 204]
    assert over_topic.status_code == 429 and "per topic" in over_topic.text
    assert elsewhere.status_code == 204
    assert fat.status_code == 403  # counted, then refused by the fat-ping rule (untrusted network)
    assert over_client.status_code == 429 and "per client" in over_client.text


async def test_publish_on_the_hub_endpoint_counts_against_the_clients_publish_budget(make_app):
    _, c = await limited(make_app, "publish=2")
    ping = {"hub.mode": "publish", "hub.url": "https://t/a"}
    codes = [(await c.post(path, data=ping)).status_code for path in ("/hub", "/publish", "/hub")]
    assert codes == [204, 204, 429]


async def test_subscribe_per_callback_host(make_app):
    app, c = await limited(make_app, "subscribe:callback-host=2")

    def sub(cb: str) -> dict[str, str]:
        return {"hub.mode": "subscribe", "hub.topic": "https://t/", "hub.callback": cb}

    async with client_for(app, OTHER) as d:
        ok = [(await x.post("/hub", data=sub(f"https://Victim.example/{i}"))).status_code for i, x in enumerate((c, d))]
        second = await c.post("/hub", data=sub("https://victim.example:8443/other"))
        third = await c.post("/hub", data=sub("https://victim.example./third"))  # one host, however spelled
        elsewhere = await c.post("/hub", data=sub("https://me.example/cb"))
        other_client = await d.post("/hub", data=sub("https://victim.example/d2"))  # d's budget is its own
    assert ok == [202, 202] and second.status_code == 202
    assert third.status_code == 429 and "callback-host" in third.text
    assert elsewhere.status_code == 202
    assert other_client.status_code == 202


async def test_relay_public_urls_per_name(make_app):
    _, c = await limited(make_app, "relay:name=2")
    codes = [(await c.get(f"/relay/alice/{i}")).status_code for i in range(3)]
    bob = await c.post("/relay/bob/x", content=b"hi")
    assert codes == [404, 404, 429]
    assert bob.status_code == 404 and bob.text == "no such registration\n"  # the relay's answer, not a limit


async def test_exempt_networks_in_process_requests_and_zero_window(make_app):
    app, _ = await limited(make_app, "registration=1", rate_limit_exempt=("127.0.0.0/8",))
    async with client_for(app, LOOPBACK) as local, client_for(app, ("127.0.0.1", 0)) as own:
        assert [(await local.post("/reversehttp", data={"name": f"l{i}"})).status_code for i in range(3)] == [201] * 3
        assert [(await own.post("/reversehttp", data={"name": f"o{i}"})).status_code for i in range(3)] == [201] * 3
    _, c = await limited(make_app, "registration=1", rate_limit_window=0.0)
    assert [(await c.post("/reversehttp", data={"name": f"z{i}"})).status_code for i in range(3)] == [201] * 3


async def test_window_ends(make_app):
    """A fixed window: once it has passed, the client may go on (the broker key expires with it)."""
    _, c = await limited(make_app, "registration=1", rate_limit_window=0.5)
    names = (f"n{i}" for i in itertools.count())

    async def register() -> httpx.Response:
        return await c.post("/reversehttp", data={"name": next(names)})

    assert (await register()).status_code == 201
    for _ in range(5):  # a registration is a database write: on a busy machine the window may turn between two
        refused = await register()
        if refused.status_code == 429:
            break
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"

    async def passes() -> bool:
        return (await register()).status_code == 201

    await wait_for(passes, timeout=5)


async def test_counted_in_the_shared_broker(make_app):
    """Two apps (two processes' worth) on one broker share one budget."""
    broker = MemoryBroker()
    assert await shared_budget(make_app, broker, broker) == [204, 204, 204, 429]


@pytest.mark.redis
async def test_counted_in_redis_across_processes(make_app, redis_url):
    from reversehub.core.broker.redis import RedisBroker

    prefix = f"reversehub-test:{uuid.uuid4().hex}:"
    one, two = RedisBroker(redis_url, prefix=prefix), RedisBroker(redis_url, prefix=prefix)
    try:
        assert await shared_budget(make_app, one, two) == [204, 204, 204, 429]
    finally:
        await one.aclose()
        await two.aclose()


async def shared_budget(make_app, *brokers: Broker) -> list[int]:
    clients = [(await limited(make_app, "publish=3", broker=broker))[1] for broker in brokers]
    ping = {"hub.mode": "publish", "hub.url": "https://t/a"}
    a, b = clients
    return [(await x.post("/publish", data=ping)).status_code for x in (a, b, a, b)]


async def test_refusals_are_counted_in_metrics(make_app):
    app, c = await limited(make_app, "registration=1")
    for _ in range(3):
        await c.post("/reversehttp")
    text = generate_latest(app.state.services.metrics).decode()
    assert 'reversehub_rate_limited_total{limit="registration"} 2.0' in text


async def test_a_failing_broker_lets_requests_pass(make_app):
    class Down(MemoryBroker):
        async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
            raise ConnectionError("redis is down")

    _, c = await limited(make_app, "registration=1", "registration:name=1", broker=Down())
    assert [(await c.post("/reversehttp", data={"name": "a", "token": "t"})).status_code for _ in range(3)] == [
        201,
        204,
        204,
    ]


async def test_defaults_do_not_limit_a_busy_honest_client(make_app):
    _, c = await make_app(transport=NOWHERE, rate_limit_exempt=())
    for i in range(250):
        form = {"hub.mode": "subscribe", "hub.topic": "https://t/", "hub.callback": f"https://cb{i}/"}
        assert (await c.post("/hub", data=form)).status_code == 202


async def test_installed_in_the_app(make_app):
    _, client = await make_app(rate_limit=("registration=1",), rate_limit_exempt=(), rate_limit_window=3600.0)
    codes = [(await client.post("/reversehttp", data={"name": "alice"})).status_code for _ in range(2)]
    assert codes[1] == 429 and codes[0] != 429


# Slow callbacks ----------------------------------------------------------------------------------
class Callbacks:
    """Subscribers on two hosts: slow.test never answers a delivery, good.test answers at once."""

    def __init__(self) -> None:
        self.good: list[bytes] = []
        self.hanging = 0

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        if request.method == "GET":
            response = PlainTextResponse(request.query_params.get("hub.challenge", ""))
        elif request.url.hostname == "slow.test":
            self.hanging += 1
            await anyio.sleep_forever()
        else:
            self.good.append(await request.body())
            response = Response(status_code=204)
        await response(scope, receive, send)


async def test_never_answering_callbacks_do_not_starve_others(make_app):
    callbacks = Callbacks()
    app, client = await make_app(
        transport=httpx.ASGITransport(app=callbacks),
        trusted_networks=("0.0.0.0/0",),
        delivery_concurrency=8,
        delivery_per_host=4,
        delivery_timeout=60.0,
        outbox_scan_interval=0.05,
    )
    topic = "http://pub.test/feed"
    slow = [f"http://slow.test/{i}" for i in range(100)]
    for callback in [*slow, "http://good.test/cb"]:
        form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
        await wait_for(lambda form=form: _status(client.post("/hub", data=form), 202))

    async def all_active() -> bool:
        async with app.state.services.sessions() as s:
            count = select(func.count()).select_from(Subscription).where(Subscription.state == "active")
            return (await s.execute(count)).scalar_one() == len(slow) + 1

    await wait_for(all_active)
    for n in range(3):
        r = await client.post(f"/publish?hub.topic={topic}", content=b"%d" % n, headers={"Content-Type": "text/plain"})
        assert r.status_code < 300
        with anyio.fail_after(2):
            await wait_for(lambda n=n: len(callbacks.good) == n + 1)
    assert callbacks.good == [b"0", b"1", b"2"]
    assert 0 < callbacks.hanging <= 4  # one host's connections are capped: the rest wait their turn


async def _status(response, expected: int) -> bool:
    return (await response).status_code == expected


async def test_counters_of_past_windows_do_not_pile_up_in_the_memory_broker():
    """A flood of distinct names (random topics, say) leaves no more keys than live windows hold."""
    broker = MemoryBroker()
    settings = Settings(rate_limit=("publish:topic=1000000",), rate_limit_window=0.001)
    limits = Limits(settings, broker, CollectorRegistry())
    for i in range(3000):
        assert await limits.hit("publish:topic", f"topic=https://t/{i}") is None
        for _ in range(2):
            await broker.incr(f"other:{i}:{_}", ttl=0.001)  # counters made elsewhere, all expiring
    assert len(broker._keys) < 4096 + 10


async def test_a_ping_naming_many_topics_costs_a_bounded_number_of_counters(make_app):
    class Counting(MemoryBroker):
        calls = 0

        async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
            if key.startswith("rl:"):
                self.calls += 1
                assert len(key) < 200
            return await super().incr(key, ttl, amount)

    broker = Counting()
    _, c = await limited(make_app, broker=broker)
    urls = [f"https://t.example/{'x' * 150}/{i}" for i in range(100)]  # as many as a ping may name
    r = await c.post("/publish", data={"hub.mode": "publish", "hub.url": urls})
    assert r.status_code == 204
    assert broker.calls == 2 + MAX_NAMES  # the client's budget (once, then the other 99 topics at once) and 20 topics
