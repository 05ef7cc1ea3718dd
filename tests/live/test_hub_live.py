"""The hub on real sockets: uvicorn serving reversehub, real callback servers, no injected transport
(so callbacks go through the lean sender, topics through httpx), and the mission path end to end:
an application with nothing but an HTTP client claims a relay name, subscribes with its public URL,
answers the verification over its long-poll and receives a publish."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from reversehub.server.app import create_app
from tests.hub.proofs import status_params
from tests.support import bound_socket, live_settings, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]


@pytest.fixture
async def hub_url(database_url: str) -> AsyncIterator[str]:
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = live_settings(database_url, port, poll_timeout=2.0, delivery_retry_base=0.02, outbox_scan_interval=0.05)
    async with serve_live(create_app(settings), sock=sock) as url:
        yield url


class Callback:
    """A subscriber's web server: echoes challenges, records deliveries, answers as told."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: list[str] = []  # "500", "chunked", "close"; then 204
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        self.deliveries.append((request.url.path, dict(request.headers), await request.body()))
        answer = self.answers.pop(0) if self.answers else "204"
        if answer == "chunked":

            async def chunks() -> AsyncIterator[bytes]:
                yield b"thanks, "
                yield b"got it"

            return StreamingResponse(chunks(), status_code=200)
        if answer == "close":
            return PlainTextResponse("bye", headers={"Connection": "close"})
        return Response(status_code=int(answer))


async def test_subscribe_verify_deliver_sign_and_retry_over_real_sockets(hub_url):
    cb = Callback()
    topic = "http://127.0.0.1:9/topic"
    async with serve_live(cb.app) as cb_url, httpx.AsyncClient(base_url=hub_url) as client:
        for name in ("a", "b"):
            form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": f"{cb_url}/{name}", "hub.secret": name}
            assert (await client.post("/hub", data=form)).status_code == 202
        # Verification and activation take a moment: the owners ask the hub (/hub/status) until active.
        for name in ("a", "b"):
            await wait_for(lambda name=name: _active(client, f"{cb_url}/{name}", topic, name), timeout=10)
        cb.answers = ["500", "chunked", "close"]
        for n in range(3):
            r = await client.post(
                f"/publish?hub.topic={topic}", content=b"update %d" % n, headers={"Content-Type": "text/plain"}
            )
            assert r.status_code == 204
        await wait_for(lambda: _complete(cb), timeout=10)
    for path, headers, body in cb.deliveries:
        secret = path.strip("/").encode()
        assert headers["x-hub-signature"] == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert headers["link"] == f'<{hub_url}/hub>; rel="hub", <{topic}>; rel="self"'
    for name in ("a", "b"):
        got = [(h["x-hub-sequence"], b) for p, h, b in cb.deliveries if p == f"/{name}"]
        assert sorted({(seq, b) for seq, b in got}) == [("1", b"update 0"), ("2", b"update 1"), ("3", b"update 2")]
    assert len(cb.deliveries) == 7  # six updates, one of them twice (the 500)


async def _active(client, callback, topic, secret) -> bool:
    r = await client.get("/hub/status", params=status_params(secret, callback, topic))
    return r.status_code == 200 and r.json()["state"] == "active"


def _complete(cb) -> bool:
    for name in ("a", "b"):
        bodies = [b for p, _, b in cb.deliveries if p == f"/{name}"]
        if not all(b"update %d" % n in bodies for n in range(3)):
            return False
    return True


def _links(response: httpx.Response) -> dict[str, str]:
    return {link["rel"]: link["url"] for link in response.links.values()}


async def test_mission_path_relay_subscriber_with_no_project_client(hub_url):
    """ReverseHttp + WebSub with plain HTTP requests only (httpx as any HTTP client would)."""
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{hub_url}/reversehttp", data={"name": "mission", "token": "t0ken"})
        assert r.status_code == 201, r.text
        links = _links(r)
        public = links["related"].rstrip("/") + "/inbox"
        request_url = links["first"]
        topic = f"{hub_url}/topics/mission"
        got: list[tuple[str, bytes, str]] = []
        verified = anyio.Event()
        delivered = anyio.Event()

        async def serve_over_long_poll() -> None:
            url = request_url
            while not delivered.is_set():
                poll = await http.get(url)
                if poll.status_code == 204:
                    continue
                assert poll.status_code == 200 and poll.headers["content-type"].startswith("message/http")
                head, _, body = poll.content.partition(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                got.append((method, body, target))
                if method == "GET":
                    challenge = parse_qs(urlsplit(target).query)["hub.challenge"][0].encode()
                    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(challenge), challenge)
                else:
                    reply = b"HTTP/1.1 204 No Content\r\n\r\n"
                answered = await http.post(url, content=reply, headers={"Content-Type": "message/http"})
                assert answered.status_code == 202
                if method == "GET":
                    verified.set()
                else:
                    delivered.set()
                url = _links(poll).get("next", url)

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_over_long_poll)
            form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": public}
            assert (await http.post(f"{hub_url}/hub", data=form)).status_code == 202
            with anyio.fail_after(10):
                await verified.wait()
            await wait_for(lambda: _published(http, hub_url, topic, delivered), timeout=10)
            with anyio.fail_after(10):
                await delivered.wait()
        method, body, target = got[-1]
        assert method == "POST" and body == b"news for the mission"
        assert urlsplit(target).path.endswith("/inbox")


async def _published(http, hub_url, topic, delivered) -> bool:
    # The subscription is stored right after the verification answer; publish until it counts.
    r = await http.post(
        f"{hub_url}/publish?hub.topic={topic}", content=b"news for the mission", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 204
    with anyio.move_on_after(0.5):
        await delivered.wait()
    return delivered.is_set()
