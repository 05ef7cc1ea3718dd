"""The relay through a real uvicorn socket: big binary bodies, disconnects mid-poll, original clients."""

from __future__ import annotations

import http.client
import os
import socket
from dataclasses import replace
from urllib.parse import urlencode, urlsplit

import anyio
import httpx
import pytest

from relay.wire import HttpResponse, parse_request, serialize_response
from reversehub.server.app import create_app
from reversehub.server.protocol import CoalescingHttpToolsProtocol
from tests.relay.helpers import links
from tests.support import bound_socket, serve_live, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def live(settings):
    sock = bound_socket()
    port = sock.getsockname()[1]
    # A long poll timeout: a test passes only if disconnects, not timeouts, free the slots.
    app = create_app(replace(settings, public_url=f"http://127.0.0.1:{port}", port=port, poll_timeout=30))
    async with serve_live(app, sock=sock) as url:
        yield app, url


async def _waiting(client: httpx.AsyncClient, n: int) -> bool:
    return f"relay_pollers_waiting {float(n)}" in (await client.get("/metrics")).text


async def test_binary_round_trip_of_one_mebibyte(live):
    app, url = live
    up, down = os.urandom(1024 * 1024), os.urandom(1024 * 1024)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.post("/reversehttp", data={"name": "big", "token": "t"})
        first = links(r)["first"]
        result = {}
        async with anyio.create_task_group() as tg:

            async def requester():
                result["r"] = await client.post(
                    "/relay/big/blob", content=up, headers={"content-type": "application/octet-stream"}
                )

            tg.start_soon(requester)
            while (poll := await client.get(first)).status_code == 204:
                pass
            request = parse_request(poll.content)
            assert request.body == up
            assert poll.headers["requesting-client"].startswith("127.0.0.1:")
            reply = serialize_response(HttpResponse(200, [("Content-Type", "application/octet-stream")], down, "OK"))
            assert (
                await client.post(first, content=reply, headers={"content-type": "message/http"})
            ).status_code == 202
        assert result["r"].status_code == 200
        assert result["r"].content == down


@pytest.fixture(params=["uvicorn", "serve"])
async def live_any(request, settings):
    """The relay under uvicorn's own protocol (a task watches receive() for the disconnect) and
    under serve's (reversehub.server.protocol: the connection says it is lost)."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    app = create_app(replace(settings, public_url=f"http://127.0.0.1:{port}", port=port, poll_timeout=30))
    config = {"http": CoalescingHttpToolsProtocol} if request.param == "serve" else {}
    async with serve_live(app, sock=sock, **config) as url:
        yield app, url


async def test_a_poller_that_disconnects_gives_its_slot_up(live_any, settings):
    app, url = live_any
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.post("/reversehttp", data={"name": "gone", "token": "t"})
        first = links(r)["first"]
        target = urlsplit(first)
        # A poller that connects, waits, and goes away without a word.
        with socket.create_connection((target.hostname, target.port)) as sock:
            sock.sendall(f"GET {target.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await wait_for(lambda: _waiting(client, 1))
        await wait_for(lambda: _waiting(client, 0), timeout=2)
        # Nobody is polling now: a requester is told so quickly instead of feeding a dead poller.
        with anyio.fail_after(settings.unavailable_timeout * 4):
            assert (await client.get("/relay/gone/")).status_code == 504
        # The same request URL still works for the poller's next attempt.
        result = {}
        async with anyio.create_task_group() as tg:

            async def requester():
                result["r"] = await client.get("/relay/gone/back")

            tg.start_soon(requester)
            while (await client.get(first)).status_code == 204:
                pass
            ok = serialize_response(HttpResponse(200, [], b"back"))
            assert (await client.post(first, content=ok)).status_code == 202
        assert result["r"].text == "back"


def _original_python_client_once(gateway: str, label: str) -> tuple[str, bytes]:
    """What tonyg/reversehttp's reversehttp.py does, with http.client in place of httplib."""

    def fetch(url: str, params: str | bytes | None = None, ctype: str = "application/x-www-form-urlencoded"):
        pieces = urlsplit(url)
        conn = http.client.HTTPConnection(pieces.netloc, timeout=10)
        if params:
            conn.request("POST", pieces.path, body=params, headers={"Content-type": ctype})
        else:
            conn.request("GET", pieces.path)
        return conn.getresponse()

    def parse_link_headers(resp) -> dict[str, str]:
        result = {}
        for link_header in resp.getheader("Link").split(", "):
            url = rel = None
            for piece in link_header.split(";"):
                piece = piece.strip()
                if piece[0] == "<":
                    url = piece[1:-1]
                elif piece[:5].lower() == 'rel="':
                    rel = piece[5:-1]
            if url and rel:
                result[rel] = url
        return result

    resp = fetch(gateway, urlencode({"name": label, "token": "-"}))
    assert 200 <= resp.status < 300
    found = parse_link_headers(resp)
    next_req, location = found["first"], found["related"]
    while True:
        resp = fetch(next_req)
        if resp.status == 204:
            continue  # reversehttp.py fails on the missing Requesting-Client and polls the same URL again
        assert resp.status == 200
        client_addr = resp.getheader("Requesting-Client").split(":")
        assert len(client_addr) == 2
        this_req, body = next_req, resp.read()
        break
    reply = b"HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.3 Python\r\nContent-type: text/plain\r\n\r\nThis is response #0\r\n"
    ack = fetch(this_req, reply, "message/http")
    assert ack.status == 202
    return location, body


async def test_the_original_python_client(live):
    app, url = live
    result = {}
    async with anyio.create_task_group() as tg:

        async def app_side():
            result["app"] = await anyio.to_thread.run_sync(_original_python_client_once, url + "/reversehttp", "python")

        tg.start_soon(app_side)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await wait_for(lambda: _waiting(client, 1))
            result["r"] = await client.get("/relay/python/hello")
    location, request = result["app"]
    assert location == url + "/relay/python/"
    assert request.startswith(b"GET /relay/python/hello HTTP/1.1\r\n")
    assert (result["r"].status_code, result["r"].text) == (200, "This is response #0\r\n")


@pytest.mark.parametrize("protocol", ["uvicorn", "serve"])
async def test_host_based_name_round_trip_over_a_socket(settings, protocol):
    """--relay-domain through a real server: the Host header picks the name, the whole path and
    query reach the application, and the main host serves no /relay/ path."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    app = create_app(replace(settings, public_url=f"http://127.0.0.1:{port}", port=port, relay_domain="relay.test"))
    config = {"http": CoalescingHttpToolsProtocol} if protocol == "serve" else {}
    async with serve_live(app, sock=sock, **config) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.post("/reversehttp", data={"name": "shop", "token": "t"})
        found = links(r)
        assert found["related"] == f"http://shop.relay.test:{port}/"
        result = {}

        async def requester():
            result["r"] = await client.get("/items/7?q=a%20b", headers={"Host": f"Shop.Relay.Test:{port}"})

        async with anyio.create_task_group() as tg:
            tg.start_soon(requester)
            while (poll := await client.get(found["first"])).status_code == 204:
                pass
            request = parse_request(poll.content)
            reply = serialize_response(HttpResponse(200, [("Content-Type", "text/plain")], b"item 7", "OK"))
            ack = await client.post(found["first"], content=reply, headers={"content-type": "message/http"})
            assert ack.status_code == 202
        assert poll.content.startswith(b"GET /items/7?q=a%20b HTTP/1.1\r\n")
        assert dict((k.lower(), v) for k, v in request.headers)["host"] == f"Shop.Relay.Test:{port}"
        assert result["r"].status_code == 200 and result["r"].text == "item 7"
        assert (await client.get("/relay/shop/items/7")).status_code == 404
