"""Mailbox names (relay.mailbox): requests that find no poller are stored, answered 202, delivered later."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest
from sqlalchemy.engine import make_url

from relay.errors import NoPoller
from relay.wire import HttpResponse, parse_request, serialize_response
from reversehub.server.app import create_app
from tests.conftest import started
from tests.relay.helpers import links, register, serve_one
from tests.support import wait_for
from tests.test_storage_faults import _read_only, pg_database  # noqa: F401

pytestmark = pytest.mark.anyio


async def answer(client: httpx.AsyncClient, url: str, body: bytes, status: int = 200) -> tuple[bytes, str]:
    """Poll ``url`` once (a request must be waiting), answer it; returns (the request's body, next URL)."""
    r = await client.get(url)
    assert r.status_code == 200, r.status_code
    request = parse_request(r.content)
    reply = serialize_response(HttpResponse(status, [("X-Mail", "yes"), ("Set-Cookie", "a=b")], body, "OK"))
    ack = await client.post(url, content=reply, headers={"content-type": "message/http"})
    assert ack.status_code == 202, ack.text
    return request.body, links(r)["next"]


async def store(client: httpx.AsyncClient, name: str, body: bytes) -> str:
    r = await client.post(f"/relay/{name}/hook", content=body)
    assert r.status_code == 202, (r.status_code, r.text)
    location = r.headers["location"]
    assert location.startswith("http://hub.test/reversehttp/m/")
    # The capability: at least 128 random bits (24 bytes, base64url).
    assert len(location.rsplit("/", 1)[1]) >= 32
    return location


async def test_requests_to_an_absent_application_are_stored_and_delivered_in_order(client):
    urls = await register(client, "away", mailbox="1")
    locations = [await store(client, "away", b"event %d" % i) for i in range(3)]
    pending = await client.get(locations[0])
    assert pending.status_code == 202 and "pending" in pending.text
    url = urls["first"]
    for i in range(3):
        body, url = await answer(client, url, b"done %d" % i, status=201)
        assert body == b"event %d" % i
    for i, location in enumerate(locations):
        r = await client.get(location)
        assert (r.status_code, r.content, r.headers["x-mail"]) == (201, b"done %d" % i, "yes")
        assert r.headers["content-security-policy"] == "sandbox"
        assert "set-cookie" not in r.headers  # it would be the relay's main origin's cookie
    assert (await client.get(locations[0] + "x")).status_code == 404


async def test_a_mailbox_name_with_a_poller_relays_live(client):
    urls = await register(client, "here", mailbox="1")
    result = {}

    async def requester():
        result["r"] = await client.post("/relay/here/hook", content=b"live")

    async with anyio.create_task_group() as tg:
        tg.start_soon(requester)
        await serve_one(client, urls["first"], status=200, body=b"answered live")
    assert (result["r"].status_code, result["r"].content) == (200, b"answered live")


async def test_a_name_without_mailbox_still_answers_504(client):
    await register(client, "plain")
    r = await client.post("/relay/plain/hook", content=b"x")
    assert r.status_code == 504


async def test_a_poller_that_left_gets_its_requests_stored_after_the_unavailable_timeout(client):
    urls = await register(client, "left", mailbox="1")
    assert (await client.get(urls["first"])).status_code == 204  # it polled once: "seen" for a while
    started_at = time.monotonic()
    location = await store(client, "left", b"late")
    assert time.monotonic() - started_at < 10
    body, _ = await answer(client, urls["first"], b"ok")
    assert body == b"late"
    assert (await client.get(location)).content == b"ok"


async def test_new_requests_do_not_overtake_stored_ones(client):
    urls = await register(client, "order", mailbox="1")
    await store(client, "order", b"first")
    await store(client, "order", b"second")
    seen = []
    url = urls["first"]
    body, url = await answer(client, url, b"ok")
    seen.append(body)
    # The application is back, but one stored request still waits: a new one queues behind it.
    await store(client, "order", b"third")
    for _ in range(2):
        body, url = await answer(client, url, b"ok")
        seen.append(body)
    assert seen == [b"first", b"second", b"third"]


async def test_mail_stored_while_a_poll_waits_reaches_that_poll(make_app):
    app, client = await make_app(poll_timeout=5.0)
    urls = await register(client, "nudged", mailbox="1")
    relay = app.state.relay
    reg = await relay.lookup("nudged")
    result = {}

    async def poller():
        result["r"] = await client.get(urls["first"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(poller)
        # A requester whose live attempt was withdrawn for want of a poller (504 "no poller") just
        # as this poll began: its request is stored while the poll already waits on the queue.
        while await relay.broker.get("relay.seen.nudged") is None:
            await anyio.sleep(0.01)
        started_at = time.monotonic()
        raw = b"x 1.2.3.4:5\nPOST /relay/nudged/hook HTTP/1.1\r\ncontent-length: 5\r\n\r\nnudge"
        await relay.mail(reg, raw, _no_poller)
    assert result["r"].status_code == 200 and parse_request(result["r"].content).body == b"nudge"
    assert time.monotonic() - started_at < 4  # not at the end of the poll


async def _no_poller() -> bytes:
    raise NoPoller()


async def test_bounds_per_name_answer_507_and_the_total_503(make_app):
    _, client = await make_app(mailbox_max_per_name=2, mailbox_max_bytes_per_name=10_000, mailbox_max_bytes=25_000)
    await register(client, "small", mailbox="1")
    await register(client, "other", mailbox="1")
    await register(client, "third", mailbox="1")
    await register(client, "fourth", mailbox="1")
    await store(client, "small", b"a")
    await store(client, "small", b"b")
    full = await client.post("/relay/small/hook", content=b"c")
    assert full.status_code == 507 and "mailbox" in full.text
    # One name cannot fill the total: the others still store.
    big = b"x" * 9000
    await store(client, "other", big)
    too_big = await client.post("/relay/other/hook", content=big)
    assert too_big.status_code == 507
    await store(client, "third", big)
    total = await client.post("/relay/fourth/hook", content=big)
    assert total.status_code == 503 and "mailboxes are full" in total.text


async def test_nothing_is_lost_across_a_restart(settings):
    app = create_app(settings)
    async with started(app) as client:
        urls = await register(client, "durable", mailbox="1")
        location = await store(client, "durable", b"kept")
    app = create_app(settings)
    async with started(app) as client:
        body, _ = await answer(client, urls["first"], b"after restart")
        assert body == b"kept"
        assert (await client.get(location)).content == b"after restart"


async def test_a_taken_request_that_is_not_answered_is_handed_out_again(make_app):
    _, client = await make_app(reply_timeout=0.5, unavailable_timeout=0.2)
    urls = await register(client, "crashy", mailbox="1")
    location = await store(client, "crashy", b"again")
    r = await client.get(urls["first"])
    assert parse_request(r.content).body == b"again"  # taken, never answered (the application died)
    deadline = time.monotonic() + 10
    while True:
        r = await client.get(links(r)["next"])
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline
    assert parse_request(r.content).body == b"again"
    reply = serialize_response(HttpResponse(200, [], b"second time", "OK"))
    ack = await client.post(str(r.url), content=reply, headers={"content-type": "message/http"})
    assert ack.status_code == 202
    assert (await client.get(location)).content == b"second time"


async def test_an_invalid_reply_is_stored_as_502(client):
    urls = await register(client, "broken", mailbox="1")
    location = await store(client, "broken", b"x")
    r = await client.get(urls["first"])
    assert r.status_code == 200
    ack = await client.post(urls["first"], content=b"not http", headers={"content-type": "message/http"})
    assert ack.status_code == 400
    assert (await client.get(location)).status_code == 502


async def test_deleting_the_name_deletes_its_mail(client):
    urls = await register(client, "gone", mailbox="1")
    location = await store(client, "gone", b"secret")
    assert (await client.delete(urls["location"])).status_code == 204
    assert (await client.get(location)).status_code == 404
    # Registered anew (by anyone): nothing of the old registration's mail is delivered.
    again = await register(client, "gone", token="other", mailbox="1")
    assert (await client.get(again["first"])).status_code == 204


async def test_retention_prunes_old_mail(app_client):
    app, client = app_client
    await register(client, "old", mailbox="1")
    location = await store(client, "old", b"x")
    relay = app.state.relay
    assert await relay.mailbox.prune(time.time()) == 0
    assert await relay.mailbox.prune(time.time() + relay.settings.mailbox_retention + 1) == 1
    assert (await client.get(location)).status_code == 404


async def test_the_mailbox_flag(client):
    bad = await client.post("/reversehttp", data={"name": "flag", "token": "t", "mailbox": "maybe"})
    assert bad.status_code == 400
    urls = await register(client, "flag")
    described = await client.get(urls["location"], headers={"accept": "application/json"})
    assert "mailbox" not in described.json()
    # A refresh may turn it on (as a query parameter too); one without the field keeps it.
    r = await client.post("/reversehttp?mailbox=1", data={"name": "flag", "token": "t"})
    assert r.status_code == 204
    await register(client, "flag")
    described = await client.get(urls["location"], headers={"accept": "application/json"})
    assert described.json()["mailbox"] == 1


async def test_concurrent_pollers_share_stored_requests_each_once(make_app):
    _, client = await make_app(poll_timeout=20.0)
    await register(client, "shared", mailbox="1")
    for i in range(9):
        await store(client, "shared", b"%d" % i)
    got: list[bytes] = []
    started_at = time.monotonic()
    done = anyio.Event()

    async def poller():
        url = (await register(client, "shared"))["first"]  # a refresh: a request URL of its own
        while True:
            body, url = await answer(client, url, b"ok")
            got.append(body)
            if len(got) == 9:
                done.set()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(poller)
        with anyio.fail_after(15):
            await done.wait()
        tg.cancel_scope.cancel()
    # Nobody waits out a poll (20 s) while stored requests are left.
    assert time.monotonic() - started_at < 10
    assert sorted(got) == sorted(b"%d" % i for i in range(9))


@pytest.mark.postgres
async def test_storage_that_cannot_write_is_503_and_never_202(pg_database, postgres_url, make_app):  # noqa: F811
    _, client = await make_app(database_url=pg_database)
    await register(client, "ro", mailbox="1")
    await store(client, "ro", b"before")
    name = make_url(pg_database).database
    await _read_only(postgres_url, name, True)
    try:
        r = await client.post("/relay/ro/hook", content=b"while read-only")
        assert r.status_code == 503 and "storage" in r.text
    finally:
        await _read_only(postgres_url, name, False)

    async def stores() -> bool:
        return (await client.post("/relay/ro/hook", content=b"after")).status_code == 202

    await wait_for(stores, timeout=10)


async def test_a_request_a_poller_took_and_never_answered_is_stored_not_504(make_app):
    app, client = await make_app(reply_timeout=0.5, unavailable_timeout=0.2)
    urls = await register(client, "vanished", mailbox="1")
    result = {}

    async def poller():
        result["poll"] = await client.get(urls["first"])

    async def requester():
        result["r"] = await client.post("/relay/vanished/hook", content=b"handed over")

    async with anyio.create_task_group() as tg:
        # A poller takes the request live and is gone before answering (shut down mid-delivery).
        tg.start_soon(poller)
        await wait_for(lambda: app.state.relay.broker.get("relay.seen.vanished"), timeout=5)
        tg.start_soon(requester)
    assert parse_request(result["poll"].content).body == b"handed over"
    assert result["r"].status_code == 202  # not 504 "no reply": stored for the application's return
    body, _ = await answer(client, links(result["poll"])["next"], b"later")
    assert body == b"handed over"
    assert (await client.get(result["r"].headers["location"])).content == b"later"
