"""PTTH in-process: the offer's parsing, the fallback to a poll where the server cannot take a
connection over, and (over a real socket with the server's protocol) leases, keep-alive and the
busy/absent rule. tests/live/test_ptth.py runs the rest against ``reversehub serve``."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import anyio
import httpx
import pytest

from relay.errors import InvalidInput
from relay.ptth import DRAFT, LEGACY, offered
from relay.wire import parse_request
from reversehub.server.app import create_app
from reversehub.server.protocol import CoalescingHttpToolsProtocol
from tests.relay.helpers import links, register
from tests.support import bound_socket, serve_live, wait_for

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("method", "upgrade", "alpn", "kind"),
    [
        ("GET", "ptth", "h2, http%2F1.1", DRAFT),
        ("GET", "PTTH", "http%2f1.1", DRAFT),
        ("GET", "websocket, ptth", "http%2F1.1", DRAFT),
        ("POST", "PTTH/1.0", None, LEGACY),
        ("GET", "ptth/1.0", None, LEGACY),
        ("GET", "websocket", None, None),
    ],
)
def test_offers(method, upgrade, alpn, kind):
    offer = offered(method, upgrade, alpn)
    assert (offer.kind if offer else None) == kind


@pytest.mark.parametrize(
    ("method", "upgrade", "alpn", "says"),
    [
        ("GET", "ptth", None, "ALPN"),
        ("GET", "ptth", "h2", "http%2F1.1"),
        ("GET", "ptth", "h2c, spdy%2F3", "http%2F1.1"),
        ("POST", "ptth", "http%2F1.1", "GET"),
        ("PUT", "PTTH/1.0", None, "GET or a POST"),
    ],
)
def test_refused_offers_say_why(method, upgrade, alpn, says):
    with pytest.raises(InvalidInput) as caught:
        offered(method, upgrade, alpn)
    assert says in caught.value.reason


DRAFT_HEADERS = {"Connection": "upgrade", "Upgrade": "ptth", "ALPN": "http%2F1.1"}


async def test_an_upgrade_the_server_cannot_take_is_served_as_a_poll(client):
    """Under an ASGI test client (no takeover in the scope) a client trying PTTH gets a poll's answer."""
    urls = await register(client, "fallback")
    r = await client.get(urls["first"], headers=DRAFT_HEADERS)
    assert r.status_code == 204 and links(r)["next"] == urls["first"]
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester() -> None:
            result["r"] = await client.get("/relay/fallback/x")

        tg.start_soon(requester)
        # PTTH/1.0 clients POST: still a poll here, not a reply.
        while (r := await client.post(urls["first"], headers={"Upgrade": "PTTH/1.0"})).status_code == 204:
            pass
        assert r.status_code == 200
        assert parse_request(r.content).target == "/relay/fallback/x"
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        assert (await client.post(urls["first"], content=reply)).status_code == 202
    assert result["r"].text == "ok"


async def test_a_refused_offer_is_400_even_where_it_could_not_be_taken(client):
    urls = await register(client, "refused")
    r = await client.get(urls["first"], headers={"Connection": "upgrade", "Upgrade": "ptth", "ALPN": "h2"})
    assert r.status_code == 400 and "http%2F1.1" in r.text


# Over a real socket, with the server's protocol ------------------------------------------------------
@pytest.fixture
async def live(settings):
    sock = bound_socket()
    port = sock.getsockname()[1]
    app = create_app(
        replace(
            settings,
            public_url=f"http://127.0.0.1:{port}",
            port=port,
            lease_min=1.0,
            poll_timeout=30,
            unavailable_timeout=0.3,
            ptth_pipeline=1,
        )
    )
    async with serve_live(app, sock=sock, http=CoalescingHttpToolsProtocol) as url:
        yield app, url, port


async def _connect(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def _serving(app, client, port, name: str) -> tuple[dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
    """Register ``name`` and open a PTTH connection on its request URL: its links and the connection."""
    urls = await register(client, name)
    reader, writer = await _connect(port, httpx.URL(urls["first"]).raw_path.decode())
    await wait_for(lambda: name in app.state.relay.ptth.by_name)
    return urls, reader, writer


async def test_an_open_connection_keeps_its_lease_and_has_tcp_keepalive(live):
    app, url, port = live
    relay = app.state.relay
    async with httpx.AsyncClient(base_url=url) as client:
        urls = await register(client, "kept", lease="1")
        await register(client, "dropped", lease="1")
        _, writer = await _connect(port, httpx.URL(urls["first"]).raw_path.decode())
        await wait_for(lambda: "kept" in relay.ptth.by_name)
        sock = relay.ptth.by_name["kept"][0].transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        # A sweep 5 s on: the lease of the name with a connection was extended, the other expired.
        deleted = await relay.sweep(now=time.time() + 5)
        assert "dropped" in deleted and "kept" not in deleted
        writer.close()


async def test_a_request_waiting_for_a_busy_connection_is_not_given_up(live):
    """Busy, not absent: with the one slot taken, a second request waits past the unavailable
    timeout (0.3 s) and is served once the first is answered."""
    app, url, port = live
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        _, reader, writer = await _serving(app, client, port, "busy")
        results: dict[str, httpx.Response] = {}
        async with anyio.create_task_group() as tg:

            async def get(path: str) -> None:
                results[path] = await client.get(f"/relay/busy/{path}")

            tg.start_soon(get, "one")
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            tg.start_soon(get, "two")
            await anyio.sleep(1.0)  # past the unavailable timeout on purpose: the rule under test
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
            second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
        assert first.startswith(b"GET /relay/busy/one ") and second.startswith(b"GET /relay/busy/two ")
        assert results["one"].text == "1" and results["two"].text == "2"
        writer.close()


async def test_a_mailbox_name_is_polled_not_taken_over(live):
    """A mailbox name's stored requests reach its application through polls only."""
    app, url, port = live
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        urls = await register(client, "box", mailbox="1")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        path = httpx.URL(urls["first"]).raw_path.decode()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: PTTH/1.0\r\n\r\n".encode())
        await client.post("/relay/box/stored", content=b"x")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.close()


async def test_a_request_unanswered_within_the_reply_timeout_is_504_and_the_late_answer_dropped(live):
    app, url, port = live
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        _, reader, writer = await _serving(app, client, port, "slow")
        started = time.monotonic()
        r = await client.get("/relay/slow/late")
        assert r.status_code == 504
        assert time.monotonic() - started < app.state.settings.reply_timeout + 1
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"GET /relay/slow/late ")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")  # nobody waits for it any more
        async with anyio.create_task_group() as tg:

            async def answer() -> None:
                assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"GET /relay/slow/next ")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")

            tg.start_soon(answer)
            assert (await client.get("/relay/slow/next")).text == "next"
        writer.close()


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_under_uvicorns_own_protocols_an_upgrade_is_a_poll(settings, http):
    """uvicorn's h11 fallback and its plain httptools protocol cannot hand a connection over: the
    handshake gets the poll's answer (204 here), and a client falls back to long-polling."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    app = create_app(replace(settings, public_url=f"http://127.0.0.1:{port}", port=port, poll_timeout=0.2))
    async with serve_live(app, sock=sock, http=http) as url, httpx.AsyncClient(base_url=url) as client:
        urls = await register(client, "plain")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        path = httpx.URL(urls["first"]).raw_path.decode()
        offer = "Connection: upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\n{offer}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 204 "), head
        writer.close()


async def test_the_inspector_keeps_a_ptth_exchange_as_the_application_wrote_it(live):
    """A response read on a PTTH connection reaches its requester parsed (relay.ptth_connection
    Response) and the inspector serialized: status line, header names and order as written, the whole
    body's Content-Length, the body cut at --inspector-max-body."""
    app, url, port = live
    limit = app.state.settings.inspector_max_body
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        urls, reader, writer = await _serving(app, client, port, "seen")
        results: dict[str, httpx.Response] = {}
        for path, body in (("small", b"hello"), ("big", b"z" * (limit + 10))):
            asked = asyncio.ensure_future(client.get(f"/relay/seen/{path}"))
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"GET /relay/seen/")
            writer.write(
                b"HTTP/1.1 201 Made Here\r\nX-Case: One\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
                b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            )
            results[path] = await asyncio.wait_for(asked, 10)
        small = results["small"]
        assert small.status_code == 201 and small.reason_phrase == "Made Here" and small.text == "hello"
        assert small.headers["x-case"] == "One" and "connection" not in small.headers
        assert small.headers["content-length"] == "5" and "transfer-encoding" not in small.headers
        assert len(results["big"].content) == limit + 10
        kept = (await client.get(urls["location"] + "/requests")).json()["requests"]
        big, small_kept = kept[0], kept[1]
        assert small_kept["response"] == {
            "line": "HTTP/1.1 201 Made Here",
            "headers": [["X-Case", "One"], ["Connection", "keep-alive"], ["Content-Length", "5"]],
            "body": "hello",
        }
        assert not small_kept["response_truncated"] and small_kept["outcome"] == "replied"
        assert big["response_truncated"] and big["response"]["body"] == "z" * limit
        assert ["Content-Length", str(limit + 10)] in big["response"]["headers"]
        writer.close()
