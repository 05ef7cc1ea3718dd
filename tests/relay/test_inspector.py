"""The request inspector (relay.inspector): the owner sees a name's last requests and replays one."""

from __future__ import annotations

import anyio
import httpx
import pytest

from relay.wire import HttpResponse, parse_request, serialize_response
from tests.relay.helpers import links, register

pytestmark = pytest.mark.anyio


async def relay_one(client: httpx.AsyncClient, url: str, send, reply_body: bytes = b"ok") -> tuple[httpx.Response, str]:
    """Run ``send()`` (a request to a public URL) while answering it at request URL ``url``; returns
    the requester's response and the next request URL."""
    result = {}

    async def requester():
        result["r"] = await send()

    async with anyio.create_task_group() as tg:
        tg.start_soon(requester)
        while True:
            r = await client.get(url)
            if r.status_code == 200:
                break
        request = parse_request(r.content)
        reply = HttpResponse(200, [("X-Echo", request.target)], reply_body + request.body, "OK")
        ack = await client.post(url, content=serialize_response(reply), headers={"content-type": "message/http"})
        assert ack.status_code == 202
    return result["r"], links(r)["next"]


async def test_the_owner_lists_the_last_requests_newest_first(make_app):
    _, client = await make_app(inspector_requests=3, inspector_max_body=100)
    urls = await register(client, "insp")
    url = urls["first"]
    for i in range(5):
        _, url = await relay_one(client, url, lambda i=i: client.post(f"/relay/insp/n{i}", content=b"body %d" % i))
    r = await client.get(urls["location"] + "/requests")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["name"] == "insp"
    kept = doc["requests"]
    assert [e["request"]["line"] for e in kept] == [f"POST /relay/insp/n{i} HTTP/1.1" for i in (4, 3, 2)]
    first = kept[0]
    assert first["status"] == 200 and first["outcome"] == "replied"
    assert first["request"]["body"] == "body 4"
    assert ["x-echo", "/relay/insp/n4"] in [[k.lower(), v] for k, v in first["response"]["headers"]]
    assert first["response"]["body"] == "okbody 4"
    assert first["replay"] == f"{urls['location']}/requests/{first['id']}/replay"
    # A request larger than the bound is kept in part, and cannot be replayed.
    _, url = await relay_one(client, url, lambda: client.post("/relay/insp/big", content=b"z" * 500))
    big = (await client.get(urls["location"] + "/requests")).json()["requests"][0]
    assert big["request_truncated"] and big["replay"] is None
    assert (await client.post(f"{urls['location']}/requests/{big['id']}/replay")).status_code == 409


async def test_relay_answers_are_kept_too(client):
    urls = await register(client, "noone")
    assert (await client.get("/relay/noone/x")).status_code == 504
    kept = (await client.get(urls["location"] + "/requests")).json()["requests"]
    assert [(e["status"], e["outcome"], e["response"]) for e in kept] == [(504, "NoPoller", None)]


async def test_replay_sends_the_request_again(client):
    urls = await register(client, "again")
    _, url = await relay_one(client, urls["first"], lambda: client.put("/relay/again/thing?q=1", content=b"payload"))
    entry = (await client.get(urls["location"] + "/requests")).json()["requests"][0]
    replayed, _ = await relay_one(client, url, lambda: client.post(entry["replay"]), reply_body=b"replayed ")
    assert replayed.status_code == 200 and replayed.content == b"replayed payload"
    assert replayed.headers["x-echo"] == "/relay/again/thing?q=1"
    assert replayed.headers["x-replay-of"] == str(entry["id"])
    kept = (await client.get(urls["location"] + "/requests")).json()["requests"]
    assert len(kept) == 2 and kept[0]["request"]["line"] == "PUT /relay/again/thing?q=1 HTTP/1.1"


async def test_replay_to_an_absent_mailbox_application_is_stored(client):
    urls = await register(client, "mailed", mailbox="1")
    stored = await client.post("/relay/mailed/hook", content=b"one")
    assert stored.status_code == 202
    entry = (await client.get(urls["location"] + "/requests")).json()["requests"][0]
    assert entry["outcome"] == "stored" and entry["status"] == 202
    again = await client.post(entry["replay"])
    assert again.status_code == 202 and again.headers["location"] != stored.headers["location"]


async def test_only_the_owner_sees_the_inspector(client):
    urls = await register(client, "private")
    owner = urls["location"] + "/requests"
    assert (await client.get(owner)).status_code == 200
    cap = urls["location"].rsplit("/", 1)[1]
    forged = cap[:3] + ("A" if cap[3] != "A" else "B") + cap[4:]
    request_cap = urls["first"].rsplit("/", 1)[1]
    for url in [
        f"/reversehttp/p/{forged}/requests",
        f"/reversehttp/p/{request_cap}/requests",  # a request URL's capability is not the owner's
        f"/reversehttp/r/{request_cap}/requests",
        f"/reversehttp/p/{forged}/requests/1/replay",
    ]:
        r = await (client.post(url) if url.endswith("replay") else client.get(url))
        assert r.status_code == 404, url
    # On the public URL, /requests is the application's own path: relayed, not the inspector.
    assert (await client.get("/relay/private/requests")).status_code == 504
    # A new registration of the name (a new owner) sees nothing of the old one's requests.
    assert (await client.delete(urls["location"])).status_code == 204
    again = await register(client, "private", token="new owner")
    assert (await client.get(again["location"] + "/requests")).json()["requests"] == []
    assert (await client.get(owner)).status_code == 404


async def test_a_replay_of_another_names_request_is_404(client):
    a = await register(client, "alpha")
    b = await register(client, "beta")
    await client.get("/relay/alpha/x")
    entry = (await client.get(a["location"] + "/requests")).json()["requests"][0]
    assert (await client.post(f"{b['location']}/requests/{entry['id']}/replay")).status_code == 404


@pytest.mark.parametrize("made_up", ["9" * 5000, "12x", "-1", "\u0661\u0662"])
async def test_a_made_up_replay_id_is_404(client, made_up):
    a = await register(client, "alpha")
    assert (await client.post(f"{a['location']}/requests/{made_up}/replay")).status_code == 404


async def test_the_html_page_escapes_what_senders_sent(client):
    urls = await register(client, "page")
    await client.post("/relay/page/x", content=b"<script>alert(1)</script>")
    r = await client.get(urls["location"] + "/requests", headers={"accept": "text/html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script>" not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "/requests/" in r.text and "replay" in r.text
