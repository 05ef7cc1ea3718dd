"""Polling, replies and requesters, in-process (spec "Waiting", "Replying", "Third-party requests")."""

from __future__ import annotations

import json
from collections import Counter

import anyio
import httpx
import pytest

from relay.wire import HttpResponse, parse_request, parse_requests, serialize_response
from tests.conftest import CLIENT
from tests.relay.helpers import links, register, serve_one
from tests.support import wait_for

pytestmark = pytest.mark.anyio


async def pollers_waiting(client: httpx.AsyncClient, n: int) -> None:
    async def ready() -> bool:
        return f"relay_pollers_waiting {float(n)}" in (await client.get("/metrics")).text

    await wait_for(ready)


async def test_poll_times_out_with_204_and_the_same_url_stays_usable(client):
    urls = await register(client, "alice")
    r = await client.get(urls["first"])
    assert r.status_code == 204
    assert links(r)["next"] == urls["first"]
    # The original clients ignore rel="next" after a 204 and poll the same URL again.
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/alice/again")

        tg.start_soon(requester)
        raw, _ = await serve_one(client, urls["first"], body=b"second")
    assert result["r"].text == "second"


async def test_request_is_delivered_unaltered_with_requesting_client(client):
    urls = await register(client, "bob")
    result = {}
    body = bytes(range(256)) * 4

    async def requester():
        result["r"] = await client.put(
            "/relay/bob/some/path%20x?q=1&r=%2F", content=body, headers={"X-Custom": "Value; with stuff"}
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(requester)
        r = await client.get(urls["first"])
        assert r.status_code == 200
        assert r.headers["content-type"] == "message/http"
        assert r.headers["requesting-client"] == f"{CLIENT[0]}:{CLIENT[1]}"
        nxt = links(r)["next"]
        assert nxt != urls["first"] and nxt.startswith("http://hub.test/reversehttp/r/")
        req = parse_request(r.content)
        target = "/relay/bob/some/path%20x?q=1&r=%2F"
        assert (req.method, req.target, req.version, req.body) == ("PUT", target, "1.1", body)
        assert req.header("x-custom") == "Value; with stuff"
        assert req.header("content-length") == str(len(body))
        headers = [("X-Reply", "yes"), ("Content-Type", "application/octet-stream")]
        reply = serialize_response(HttpResponse(201, headers, body[::-1], "Made"))
        ack = await client.post(urls["first"], content=reply, headers={"content-type": "message/http"})
        assert ack.status_code == 202
    got = result["r"]
    assert (got.status_code, got.content, got.headers["x-reply"]) == (201, body[::-1], "yes")
    assert got.headers["content-type"] == "application/octet-stream"


async def test_unknown_request_urls_are_404(client):
    urls = await register(client, "carl")
    cap = urls["first"].rsplit("/", 1)[1]
    forged = cap[:5] + ("A" if cap[5] != "A" else "B") + cap[6:]
    for url in ["/reversehttp/r/x", f"/reversehttp/r/{forged}", "/reversehttp/r/" + "%FF" * 10]:
        assert (await client.get(url)).status_code == 404
        assert (await client.post(url, content=b"HTTP/1.1 200 OK\r\n\r\n")).status_code == 404


async def test_re_get_of_a_bound_url_redelivers_the_same_request(client):
    urls = await register(client, "dora")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/dora/once")

        tg.start_soon(requester)
        first = await client.get(urls["first"])
        again = await client.get(urls["first"])  # e.g. the first poll response was lost
        assert first.status_code == again.status_code == 200
        assert first.content == again.content
        assert links(first)["next"] == links(again)["next"]
        ok = serialize_response(HttpResponse(200, [], b"done"))
        assert (await client.post(urls["first"], content=ok)).status_code == 202
        assert (await client.post(urls["first"], content=ok)).status_code == 404  # answered already
    assert result["r"].text == "done"


async def test_invalid_reply_is_400_and_the_requester_gets_502(client):
    urls = await register(client, "eve")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/eve/")

        tg.start_soon(requester)
        r = await client.get(urls["first"])
        assert r.status_code == 200
        bad = await client.post(urls["first"], content=b"this is not HTTP", headers={"content-type": "message/http"})
        assert bad.status_code == 400 and bad.text.strip()
    assert result["r"].status_code == 502


async def test_replies_of_the_original_clients(client):
    """reversehttp.py: HTTP/1.0, no Content-Length; httpd.js-style form-urlencoded label."""
    urls = await register(client, "orig", token="-")
    result: dict[str, httpx.Response] = {}
    raw_reply = b"HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.3\r\nContent-type: text/plain\r\n\r\nThis is response #0\r\n"
    async with anyio.create_task_group() as tg:

        async def requester(key):
            result[key] = await client.get(f"/relay/orig/{key}")

        tg.start_soon(requester, "a")
        r = await client.get(urls["first"])
        ack = await client.post(urls["first"], content=raw_reply, headers={"content-type": "message/http"})
        assert ack.status_code == 202
        tg.start_soon(requester, "b")
        nxt = links(r)["next"]
        r = await client.get(nxt)
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert (await client.post(nxt, content=raw_reply.replace(b"#0", b"#1"), headers=form)).status_code == 202
    assert result["a"].text == "This is response #0\r\n"
    assert result["b"].text == "This is response #1\r\n"
    assert result["a"].headers["content-type"] == "text/plain"


async def test_no_registration_is_404_and_no_poller_is_504(client, settings):
    assert (await client.get("/relay/nobody/")).status_code == 404
    assert (await client.get("/relay/Bad_Name/")).status_code == 404
    await register(client, "absent")
    with anyio.fail_after(settings.unavailable_timeout * 4):
        r = await client.get("/relay/absent/x")
    assert r.status_code == 504
    assert "poller" in r.text


async def test_unanswered_request_is_504_after_reply_timeout(make_app):
    _, client = await make_app(reply_timeout=0.3)
    urls = await register(client, "slow")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/slow/")

        tg.start_soon(requester)
        assert (await client.get(urls["first"])).status_code == 200  # taken, never answered
    assert result["r"].status_code == 504
    assert "reply" in result["r"].text


async def test_busy_application_is_told_apart_from_an_absent_one(make_app):
    """A poller working on a request keeps "seen" alive: queued requests wait past unavailable_timeout."""
    _, client = await make_app(unavailable_timeout=0.1, reply_timeout=5)
    urls = await register(client, "busy")
    results: list[httpx.Response] = []
    async with anyio.create_task_group() as tg:

        async def requester(i):
            results.append(await client.get(f"/relay/busy/{i}"))

        tg.start_soon(requester, 0)
        r = await client.get(urls["first"])  # the application takes request 0 ...
        tg.start_soon(requester, 1)
        await anyio.sleep(0.35)  # ... and works on it for several unavailable timeouts (the behaviour under test)
        ack = await client.post(urls["first"], content=serialize_response(HttpResponse(200, [], b"0")))
        assert ack.status_code == 202
        await serve_one(client, links(r)["next"], body=b"1")
    assert sorted((x.status_code, x.text) for x in results) == [(200, "0"), (200, "1")]


async def test_queue_full_is_503(make_app):
    _, client = await make_app(max_queued_per_name=1, unavailable_timeout=0.3)
    await register(client, "full")
    results: list[int] = []
    async with anyio.create_task_group() as tg:

        async def requester():
            results.append((await client.get("/relay/full/")).status_code)

        tg.start_soon(requester)
        tg.start_soon(requester)
    assert sorted(results) == [503, 504]


async def test_limits_are_4xx(make_app):
    _, client = await make_app(max_body_size=1000, max_header_count=30)
    await register(client, "lim")
    assert (await client.post("/relay/lim/", content=b"x" * 1001)).status_code == 413
    many = {f"x-h{i}": "v" for i in range(40)}
    assert (await client.get("/relay/lim/", headers=many)).status_code == 431


async def test_pollers_share_work_round_robin(client):
    urls = await register(client, "rr")
    url2 = (await register(client, "rr"))["first"]  # a refresh gives a second request URL
    got: Counter[str] = Counter()
    results: list[httpx.Response] = []

    async def poller(label, url):
        _, _ = await serve_one(client, url, body=label.encode())
        got[label] += 1

    async def requester(i):
        results.append(await client.get(f"/relay/rr/{i}"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(poller, "p1", urls["first"])
        tg.start_soon(poller, "p2", url2)
        await pollers_waiting(client, 2)
        tg.start_soon(requester, 1)
        tg.start_soon(requester, 2)
    assert got == {"p1": 1, "p2": 1}
    assert sorted(r.text for r in results) == ["p1", "p2"]


async def test_requests_of_one_connection_keep_their_order(client):
    urls = await register(client, "order")
    seen: list[str] = []

    async def requester():
        for i in range(5):  # one client, one connection: each request after the previous reply
            assert (await client.get(f"/relay/order/{i}")).status_code == 200

    async with anyio.create_task_group() as tg:
        tg.start_soon(requester)
        url = urls["first"]
        for _ in range(5):
            raw, url = await serve_one(client, url)
            seen.append(parse_request(raw).target)
    assert seen == [f"/relay/order/{i}" for i in range(5)]


async def test_pipelines_when_the_poller_asks_for_them(make_app):
    app, client = await make_app(unavailable_timeout=2, max_pipeline=8)
    urls = await register(client, "pipe")
    results: dict[int, httpx.Response] = {}
    accept = {"accept": "application/http, message/http"}
    async with anyio.create_task_group() as tg:

        async def requester(i):
            results[i] = await client.post(f"/relay/pipe/{i}", content=b"body%d" % i)

        # A poll that timed out marks the name as polled, so queued requests wait; then queue three.
        assert (await client.get(urls["first"], headers=accept)).status_code == 204
        for i in range(3):
            tg.start_soon(requester, i)

        async def queued() -> bool:
            return await app.state.services.broker.length("relay.q.pipe") == 3

        await wait_for(queued)
        r = await client.get(urls["first"], headers=accept)
        reqs = parse_requests(r.content)
        assert len(reqs) == 3
        assert r.headers["content-type"] == "application/http"
        assert len(r.headers["requesting-client"].split(", ")) == 3
        replies = b"".join(serialize_response(HttpResponse(200, [], req.body.upper())) for req in reqs)
        ack = await client.post(urls["first"], content=replies, headers={"content-type": "application/http"})
        assert ack.status_code == 202
    assert {i: r.text for i, r in results.items()} == {0: "BODY0", 1: "BODY1", 2: "BODY2"}


async def test_message_http_unless_pipelines_are_asked_for(client):
    urls = await register(client, "single")
    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(client.get, f"/relay/single/{i}")
        url = urls["first"]
        for _ in range(2):
            r = await client.get(url, headers={"accept": "message/http"})
            assert r.headers["content-type"] == "message/http"
            assert len(parse_requests(r.content)) == 1
            await client.post(url, content=serialize_response(HttpResponse(200, [], b"")))
            url = links(r)["next"]


async def test_json_envelope(client):
    urls = await register(client, "json")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.post("/relay/json/x?y", content=b"\xff\x00", headers={"x-a": "b"})

        tg.start_soon(requester)
        r = await client.get(urls["first"], headers={"accept": "application/json"})
        doc = r.json()
        assert r.headers["content-type"] == "application/json"
        assert (doc["method"], doc["request-uri"], doc["http-version"]) == ("POST", "/relay/json/x?y", "1.1")
        assert ["x-a", "b"] in doc["headers"]
        assert (doc["body"], doc["body-encoding"]) == ("/wA=", "base64")
        reply = {"status": 418, "headers": [["X-T", "pot"]], "body": "short and stout"}
        ack = await client.post(urls["first"], content=json.dumps(reply), headers={"content-type": "application/json"})
        assert ack.status_code == 202
    assert (result["r"].status_code, result["r"].text, result["r"].headers["x-t"]) == (418, "short and stout", "pot")


async def test_delete_keeps_delivered_requests_answerable(client):
    urls = await register(client, "del")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/del/")

        tg.start_soon(requester)
        r = await client.get(urls["first"])
        assert r.status_code == 200
        assert (await client.delete(urls["location"])).status_code == 204
        ok = serialize_response(HttpResponse(200, [], b"after delete"))
        assert (await client.post(urls["first"], content=ok)).status_code == 202
    assert result["r"].text == "after delete"


async def test_shutdown_ends_held_polls_with_204(app_client):
    app, client = app_client
    urls = await register(client, "bye")
    result = {}
    async with anyio.create_task_group() as tg:

        async def poll():
            result["r"] = await client.get(urls["first"])

        tg.start_soon(poll)
        await pollers_waiting(client, 1)
        with anyio.fail_after(0.5):
            await app.state.relay.aclose()
            await wait_for(lambda: "r" in result)
    assert result["r"].status_code == 204


async def test_online_is_published_when_a_first_poller_arrives(app_client):
    app, client = app_client
    urls = await register(client, "online")
    async with app.state.services.broker.subscribe("relay.online") as sub:
        assert (await client.get(urls["first"])).status_code == 204
        with anyio.fail_after(1):
            assert await sub.get() == b"http://hub.test/relay/online/"


async def test_metrics_count_outcomes_and_latency(client):
    urls = await register(client, "met")
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/relay/met/")
        await serve_one(client, urls["first"])
    await client.get("/relay/nobody/")
    text = (await client.get("/metrics")).text
    assert 'relay_requests_total{outcome="replied"} 1.0' in text
    assert 'relay_requests_total{outcome="NotFound"} 1.0' in text
    assert "relay_latency_seconds_count 1.0" in text
    assert "relay_registrations" in text and "relay_pollers_waiting 0.0" in text


async def test_two_processes_share_one_relay_through_redis(make_app, redis_url):
    """Register and request on one app, poll and reply on another: nothing assumes one process."""
    import secrets

    from reversehub.core.broker.redis import RedisBroker

    url = f"{redis_url}?prefix=relaytest-{secrets.token_hex(4)}:"
    brokers = [RedisBroker(url), RedisBroker(url)]
    try:
        app1, one = await make_app(broker=brokers[0])
        app2, two = await make_app(broker=brokers[1])
        urls = await register(one, "multi")
        result = {}
        async with anyio.create_task_group() as tg:

            async def requester():
                result["r"] = await one.post("/relay/multi/x", content=b"ping")

            tg.start_soon(requester)
            raw, nxt = await serve_one(two, urls["first"], body=b"pong")
        assert parse_request(raw).body == b"ping"
        assert (result["r"].status_code, result["r"].text) == (200, "pong")
        # A delete on one process ends the other's held poll with 410.
        async with anyio.create_task_group() as tg:

            async def poll():
                result["poll"] = await two.get(nxt)

            tg.start_soon(poll)
            await pollers_waiting(two, 1)
            assert (await one.delete(urls["location"])).status_code == 204
        assert result["poll"].status_code == 410
    finally:
        for broker in brokers:
            await broker.aclose()


async def test_posts_made_here_reach_the_application_as_an_in_process_request_would(app_client):
    """The hub's deliveries to callbacks on our own relay skip HTTP and ASGI (relay.endpoints.post_here):
    the application gets the same message/http bytes as from an in-process request, and the
    requester the reply's status, or the relay's own answer."""
    from relay.endpoints import post_here
    from reversehub.core import inprocess

    app, client = app_client
    relay = app.state.relay
    urls = await register(client, "hera")
    url = urls["related"] + "cb/x%20y?token=s3cret"
    headers = {"Content-Type": "application/atom+xml", "X-Hub-Sequence": "7"}
    seen, status = [], {}

    async def direct() -> None:
        status["direct"] = await post_here(relay, url, headers, b"<feed/>")

    async def through_asgi() -> None:
        status["asgi"], _, _ = await inprocess.request(app, "POST", url, headers=headers, body=b"<feed/>", timeout=10)

    nxt = urls["first"]
    for requester in (direct, through_asgi):
        async with anyio.create_task_group() as tg:
            tg.start_soon(requester)
            raw, nxt = await serve_one(client, nxt, status=201, body=b"")
        seen.append(raw)
    assert seen[0] == seen[1]
    assert seen[0].startswith(b"POST /relay/hera/cb/x%20y?token=s3cret HTTP/1.1\r\n")
    assert status == {"direct": 201, "asgi": 201}
    assert await post_here(relay, urls["related"].replace("hera", "nobody"), headers, b"x") == 404
    assert await post_here(relay, url.replace("/relay/", "/hub/"), headers, b"x") is None
