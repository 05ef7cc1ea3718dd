"""reversehub.protocol over real sockets: one write per response, and nothing else changes.

Each test serves a small ASGI app with uvicorn's vanilla httptools protocol and with ours, and a raw
socket client checks what arrives. The write count is read from the real transport (uvicorn's
loop gives it to the protocol; a counting wrapper sits between them), so it is what the kernel sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.wire import HttpResponse, parse_request, serialize_response
from reversehub.core.connection import OnLost
from reversehub.server.app import create_app
from reversehub.server.protocol import CoalescingHttpToolsProtocol
from reversehub.server.serve import config_for
from tests.relay.helpers import links
from tests.support import bound_socket, serve_live, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request):
    """Both loops: ``reversehub serve`` runs uvloop (uvicorn's "auto"), whose transport differs from asyncio's."""
    return ("asyncio", {"use_uvloop": request.param})


PROTOCOLS = [pytest.param(HttpToolsProtocol, id="vanilla"), pytest.param(CoalescingHttpToolsProtocol, id="coalescing")]


class Counted(asyncio.Transport):
    """The loop's transport, with its write calls counted (one call is one send()/writev())."""

    def __init__(self, transport: asyncio.Transport, counts: list[int]) -> None:
        self._t = transport
        self._counts = counts

    def write(self, data: Any) -> None:
        self._counts[0] += 1
        self._t.write(data)

    def writelines(self, data: Any) -> None:
        self._counts[0] += 1
        self._t.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    # asyncio.Transport defines these, so __getattr__ would not reach them.
    def close(self) -> None:
        self._t.close()

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self._t.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size()

    def set_protocol(self, protocol: Any) -> None:
        self._t.set_protocol(protocol)

    def abort(self) -> None:
        self._t.abort()


def counting(base: type[asyncio.Protocol], counts: list[int], made: list[Any] | None = None) -> type[asyncio.Protocol]:
    """``base`` over a counting transport; ``made`` collects the protocol instances."""

    class Counting(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if made is not None:
                made.append(self)
            super().connection_made(Counted(transport, counts))

    return Counting


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = body or b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})


async def receive_until(stream: anyio.abc.ByteStream, data: bytes, done: Any) -> bytes:
    """Read onto ``data`` until ``done(data)``; a server that holds bytes back fails in 5 s."""
    with anyio.fail_after(5):
        while not done(data):
            data += await stream.receive()
    return data


async def read_until_eof(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return data


async def read_response(stream: anyio.abc.ByteStream, buffered: bytearray) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length framed response; ``buffered`` keeps what follows it."""
    while b"\r\n\r\n" not in buffered:
        buffered += await stream.receive()
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    buffered[:] = rest
    while len(buffered) < length:
        buffered += await stream.receive()
    body = bytes(buffered[:length])
    del buffered[:length]
    return head, body


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_small_response_is_one_write(protocol):
    counts = [0]
    async with serve_live(hello, http=counting(protocol, counts)) as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            buffered = bytearray()
            for _ in range(20):
                await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = await read_response(stream, buffered)
                assert head.startswith(b"HTTP/1.1 200 ") and body == b"hello"
    # uvicorn writes the head and the body apart; ours sends them together.
    assert counts[0] == (20 if protocol is CoalescingHttpToolsProtocol else 40)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_pipelined_requests_are_answered_in_order(protocol):
    async with serve_live(hello, http=protocol) as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            bodies = [b"one", b"two", b"three"]
            await stream.send(
                b"".join(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies)
            )
            buffered = bytearray()
            assert [(await read_response(stream, buffered))[1] for _ in bodies] == bodies


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "request_head",
    [b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"],
    ids=["connection-close", "http-1.0"],
)
async def test_a_closing_connection_delivers_the_whole_response(protocol, request_head):
    async with serve_live(hello, http=protocol) as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(20):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(request_head)
                with anyio.fail_after(5):
                    data = await read_until_eof(stream)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
            assert body == b"hello"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_streamed_chunk_goes_out_before_the_next_is_made(protocol):
    """The held head and first chunk leave at the loop's next turn, while the app still waits."""
    release = anyio.Event()

    async def stream_app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await release.wait()  # set by the client once it has read "first"
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with serve_live(stream_app, http=protocol) as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await receive_until(stream, b"", lambda d: b"first\r\n" in d)
            release.set()
            data = await receive_until(stream, data, lambda d: d.endswith(b"0\r\n\r\n"))
    head, _, chunked = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert chunked == b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_expect_100_continue(protocol):
    async with serve_live(hello, http=protocol) as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            interim = await receive_until(stream, b"", lambda d: b"\r\n\r\n" in d)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send(b"ping")
            with anyio.fail_after(5):
                head, body = await read_response(stream, bytearray())
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"ping"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_slow_reader_pauses_a_large_stream(protocol):
    """Flow control: the app cannot run ahead of a reader that reads nothing (memory stays bounded)."""
    chunk = os.urandom(64 * 1024)
    total_chunks = 512  # 32 MiB: far more than the kernel's socket buffers hold
    sent = [0]
    done = anyio.Event()

    async def big(scope, receive, send):
        if scope["type"] != "http":
            return
        length = b"%d" % (len(chunk) * total_chunks)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        for _ in range(total_chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent[0] += 1
        await send({"type": "http.response.body", "body": b""})
        done.set()

    made: list[Any] = []
    async with serve_live(big, http=counting(protocol, [0], made)) as url:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # Nothing is read yet: the server must pause the app rather than hold the rest.
            await wait_for(lambda: bool(made) and made[0].flow.write_paused or done.is_set(), timeout=10)
            assert not done.is_set()
            assert sent[0] < total_chunks // 2
            await reader.readuntil(b"\r\n\r\n")
            digest = hashlib.sha256()
            received = 0
            with anyio.fail_after(30):
                while received < len(chunk) * total_chunks:
                    data = await reader.read(1 << 20)
                    assert data
                    digest.update(data)
                    received += len(data)
        finally:
            writer.close()
    assert received == len(chunk) * total_chunks
    assert digest.hexdigest() == hashlib.sha256(chunk * total_chunks).hexdigest()


def test_serve_runs_uvloop_and_the_coalescing_protocol(settings):
    """``reversehub serve`` gets what the bench's bare server has (uvloop, httptools), plus coalescing."""
    import uvloop

    config = config_for(create_app(settings), settings)
    config.load()
    assert config.http_protocol_class is CoalescingHttpToolsProtocol
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


async def test_a_relayed_mebibyte_both_ways(settings):
    sock = bound_socket()
    port = sock.getsockname()[1]
    app = create_app(replace(settings, public_url=f"http://127.0.0.1:{port}", port=port))
    up, down = os.urandom(1024 * 1024), os.urandom(1024 * 1024)
    async with serve_live(app, sock=sock, http=CoalescingHttpToolsProtocol) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            first = links(await client.post("/reversehttp", data={"name": "big", "token": "t"}))["first"]
            result = {}
            async with anyio.create_task_group() as tg:

                async def requester():
                    result["r"] = await client.post("/relay/big/blob", content=up)

                tg.start_soon(requester)
                while (poll := await client.get(first)).status_code == 204:
                    pass
                assert parse_request(poll.content).body == up
                reply = serialize_response(HttpResponse(200, [("Content-Type", "application/octet-stream")], down))
                r = await client.post(first, content=reply, headers={"content-type": "message/http"})
                assert r.status_code == 202
    assert result["r"].status_code == 200
    assert result["r"].content == down


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_body_buffer_reused_after_send_goes_out_as_it_was(protocol):
    async def reuse(scope, receive, send):
        if scope["type"] != "http":
            return
        buffer = bytearray(b"first")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": buffer})
        buffer[:] = b"XXXXX"  # still in the same turn of the loop: ours has not written it yet

    async with serve_live(reuse, http=protocol) as url:
        async with await anyio.connect_tcp("127.0.0.1", int(url.rsplit(":", 1)[1])) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(5):
                _, body = await read_response(stream, bytearray())
    assert body == b"first"


def test_on_lost_calls_back_once_and_at_once_when_already_lost():
    calls: list[str] = []
    on_lost = OnLost()
    on_lost.fire()  # nobody watching: nothing to call
    on_lost.watch(lambda: calls.append("late"))  # lost before the request began to wait
    assert calls == ["late"] and on_lost.callback is None
    fresh = OnLost()
    fresh.watch(lambda: calls.append("held"))
    fresh.fire()
    fresh.fire()
    assert calls == ["late", "held"]


# What the app sends for each path, and the request line: our head writer must frame and refuse
# exactly as uvicorn does (reversehub.server.protocol.ExactCycle).
FRAMING_CASES: dict[str, tuple[bytes, int, list[tuple[bytes, bytes]], list[bytes]]] = {
    "length": (b"GET", 200, [(b"content-type", b"text/plain"), (b"content-length", b"5")], [b"hello"]),
    "chunked": (b"GET", 200, [(b"content-type", b"text/plain")], [b"one", b"two"]),
    "explicit-chunked": (b"GET", 201, [(b"transfer-encoding", b"chunked")], [b"abc"]),
    "head-no-length": (b"HEAD", 200, [(b"content-type", b"text/plain")], [b""]),
    "head-with-length": (b"HEAD", 200, [(b"content-length", b"99")], [b""]),
    "no-content": (b"GET", 204, [(b"x-a", b"1")], [b""]),
    "not-modified": (b"GET", 304, [(b"etag", b'"x"')], [b""]),
    "app-closes": (b"GET", 200, [(b"connection", b"keep-alive, Close"), (b"content-length", b"2")], [b"ok"]),
    "two-lengths": (b"GET", 200, [(b"content-length", b"2"), (b"content-length", b"7")], [b"ok"]),
    "bad-name": (b"GET", 200, [(b"x bad", b"1"), (b"content-length", b"2")], [b"ok"]),
    "bad-value": (b"GET", 200, [(b"x-ok", b"a\r\nx-injected: 1"), (b"content-length", b"2")], [b"ok"]),
    "too-short": (b"GET", 200, [(b"content-length", b"5")], [b"ok"]),
    "too-long": (b"GET", 200, [(b"content-length", b"1")], [b"ok"]),
}


async def framing_app(scope, receive, send):
    if scope["type"] != "http":
        return
    _, status, headers, bodies = FRAMING_CASES[scope["path"][1:]]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for i, body in enumerate(bodies):
        await send({"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1})


async def raw_exchange(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        with anyio.fail_after(5):
            return await read_until_eof(stream)


@pytest.mark.parametrize("case", list(FRAMING_CASES))
async def test_the_head_is_framed_and_refused_as_uvicorn_does(case):
    """Byte for byte what vanilla uvicorn writes (the date aside), on a kept-alive and a closing
    connection, for lowercase names: framing, ``Connection: close``, HEAD/204/304, refusals."""
    method = FRAMING_CASES[case][0]
    got = {}
    for protocol in (HttpToolsProtocol, CoalescingHttpToolsProtocol):
        async with serve_live(framing_app, http=protocol) as url:
            port = int(url.rsplit(":", 1)[1])
            # A second request after the first shows whether the connection was kept alive.
            twice = b"%s /%s HTTP/1.1\r\nHost: x\r\n\r\n" % (method, case.encode())
            last = b"%s /%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (method, case.encode())
            got[protocol] = [await raw_exchange(port, twice + last), await raw_exchange(port, last)]
    for ours, vanilla in zip(got[CoalescingHttpToolsProtocol], got[HttpToolsProtocol], strict=True):
        strip_date = re.compile(rb"\r\ndate: [^\r]*")
        assert strip_date.sub(b"", ours) == strip_date.sub(b"", vanilla)


async def test_names_keep_their_case_and_the_apps_date_and_server_win():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = [(b"Server", b"App/1"), (b"X-Mixed", b"Yes"), (b"Content-Length", b"2"), (b"DATE", b"then")]
        await send({"type": "http.response.start", "status": 299, "reason": b"Custom Reason", "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve_live(app, http=CoalescingHttpToolsProtocol) as url:
        data = await raw_exchange(int(url.rsplit(":", 1)[1]), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data == (
        b"HTTP/1.1 299 Custom Reason\r\nServer: App/1\r\nX-Mixed: Yes\r\nContent-Length: 2\r\nDATE: then\r\n"
        b"connection: close\r\n\r\nok"
    )


async def test_proxy_headers_still_apply_per_request():
    """uvicorn's proxy-headers layer runs for a request that carries X-Forwarded-* (from a trusted
    address: 127.0.0.1 by default) and is skipped for one without, on the same connection."""

    async def whoami(scope, receive, send):
        if scope["type"] != "http":
            return
        out = b"%s %s" % (scope["client"][0].encode(), scope["scheme"].encode())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})

    async with serve_live(whoami, http=CoalescingHttpToolsProtocol) as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            buffered = bytearray()
            seen = []
            for extra in [
                b"X-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: https\r\n",
                b"",
                b"x-forwarded-proto: https\r\n",
            ]:
                await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n%s\r\n" % extra)
                seen.append((await read_response(stream, buffered))[1])
    assert seen == [b"203.0.113.5 https", b"127.0.0.1 http", b"127.0.0.1 https"]
