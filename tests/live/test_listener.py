"""The listener's limits (reversehub.server.protocol): a request head has a deadline and a size, a new
connection that says nothing is closed, and the number of open connections has a cap.

Most tests serve a small app with our protocol and with uvicorn's own httptools protocol ("vanilla"),
over real sockets, so each one shows what uvicorn alone does with the same bytes. The last ones run
``reversehub serve`` in a process of its own, as an attacker would meet it, and read its resident
memory from ``/proc``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reversehub.core.settings import Settings
from reversehub.server.app import create_app
from reversehub.server.protocol import LINGER, CoalescingHttpToolsProtocol, ListenerConfig, ListenerLimits
from reversehub.server.serve import FD_RESERVE, config_for, connection_cap
from tests.live.test_protocol import hello, read_response
from tests.support import bound_socket, free_port, unavailable, wait_for
from tests.test_security import parse_serve

pytestmark = [pytest.mark.anyio, pytest.mark.live]

REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))
TIMEOUT = 0.5  # the head timeout of the in-process tests (seconds)
MARGIN = 1.5  # what a loaded machine may add to a deadline (seconds)


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request):
    """Both loops: ``reversehub serve`` runs uvloop, whose transports differ from asyncio's."""
    return ("asyncio", {"use_uvloop": request.param})


PROTOCOLS = [pytest.param(HttpToolsProtocol, id="vanilla"), pytest.param(CoalescingHttpToolsProtocol, id="ours")]


@asynccontextmanager
async def listening(app: Any, protocol: type = CoalescingHttpToolsProtocol, **options: Any) -> AsyncIterator[int]:
    """Serve ``app`` with ``protocol`` under a :class:`ListenerConfig` on a loopback port (yielded);
    ``options`` are :class:`ListenerLimits` fields and ``uvicorn.Config`` keywords."""
    fields = {"head_timeout", "max_head_size", "max_connections"}
    limits = ListenerLimits(**{"head_timeout": TIMEOUT, **{k: v for k, v in options.items() if k in fields}})
    config = ListenerConfig(
        app,
        limits=limits,
        http=protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        **{k: v for k, v in options.items() if k not in fields},
    )
    sock = bound_socket()
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        await wait_for(lambda: server.started, timeout=20)
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
    sock.close()


async def until_eof(stream: anyio.abc.ByteStream, limit: float) -> tuple[bytes, bool]:
    """What arrives until the server ends the connection (True) or ``limit`` seconds pass (False)."""
    data = b""
    with anyio.move_on_after(limit):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return data, True
    return data, False


async def trickle(stream: anyio.abc.ByteStream, pieces: Iterator[bytes], every: float) -> None:
    """Send one piece every ``every`` seconds until the server has had enough."""
    for piece in pieces:
        try:
            await stream.send(piece)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionResetError, BrokenPipeError):
            return
        await anyio.sleep(every)


def slow_head(name: bytes = b"x") -> Iterator[bytes]:
    """A request head that never ends: a request line, then one short header field at a time."""
    yield b"GET / HTTP/1.1\r\nHost: x\r\n"
    while True:
        yield b"X-" + name + b": 1\r\n"


# The request head's deadline --------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_trickled_head_is_answered_408_and_closed(protocol):
    async with listening(hello, protocol) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        async with anyio.create_task_group() as tg:
            start = time.monotonic()
            tg.start_soon(trickle, stream, slow_head(), 0.05)
            data, ended = await until_eof(stream, TIMEOUT + MARGIN)
            elapsed = time.monotonic() - start
            tg.cancel_scope.cancel()
    if protocol is HttpToolsProtocol:
        # uvicorn waits for a head however slowly it comes: one byte now and then holds a connection.
        assert (data, ended) == (b"", False)
        return
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b"connection: close\r\n" in data and data.endswith(b"\r\n\r\nRequest head not received within 0.5 s\n")
    assert ended and TIMEOUT - 0.05 <= elapsed < TIMEOUT + MARGIN


async def test_the_deadline_runs_from_the_first_byte_of_each_head():
    """On a kept-alive connection the next head's deadline starts with its first byte: the time the
    connection spent idle before it (within uvicorn's keep-alive timeout) is not held against it."""
    async with listening(hello, timeout_keep_alive=5) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_response(stream, bytearray())
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"hello"
        await anyio.sleep(TIMEOUT * 1.5)  # idle, longer than the head timeout
        # A head that takes most of the timeout still makes it.
        await stream.send(b"GET / HTTP/1.1\r\n")
        await anyio.sleep(TIMEOUT / 2)
        await stream.send(b"Host: x\r\n\r\n")
        head, body = await read_response(stream, bytearray())
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"hello"
        async with anyio.create_task_group() as tg:
            start = time.monotonic()
            tg.start_soon(trickle, stream, slow_head(), 0.05)
            data, ended = await until_eof(stream, TIMEOUT + MARGIN)
            tg.cancel_scope.cancel()
        assert data.startswith(b"HTTP/1.1 408 ") and ended
        assert time.monotonic() - start >= TIMEOUT - 0.05


async def test_empty_lines_do_not_keep_a_connection_open():
    """llhttp skips empty lines before a request line, so no request begins: they still count."""
    async with listening(hello) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle, stream, iter(lambda: b"\r\n", None), 0.05)
            data, ended = await until_eof(stream, TIMEOUT + MARGIN)
            tg.cancel_scope.cancel()
    assert data.startswith(b"HTTP/1.1 408 ") and ended


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(protocol):
    async with listening(hello, protocol, timeout_keep_alive=0.3) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            data, ended = await until_eof(stream, 0.3 + MARGIN)
    if protocol is HttpToolsProtocol:
        assert (data, ended) == (b"", False)  # uvicorn arms its keep-alive timeout after a response only
    else:
        assert (data, ended) == (b"", True)


async def test_an_idle_kept_alive_connection_is_still_closed_after_the_keep_alive_timeout():
    async with listening(hello, timeout_keep_alive=0.3) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        buffered = bytearray()
        assert (await read_response(stream, buffered))[1] == b"hello"
        start = time.monotonic()
        data, ended = await until_eof(stream, 0.3 + MARGIN)
    assert (bytes(buffered) + data, ended) == (b"", True)
    assert time.monotonic() - start >= 0.25


async def test_pipelined_requests_behind_a_slow_response_are_not_timed_out():
    """A request that waits its turn behind a slower one is complete: it is answered, not timed out."""

    async def slow(scope, receive, send):
        if scope["path"] == "/slow":
            await anyio.sleep(TIMEOUT * 3)
        await hello(scope, receive, send)

    async with listening(slow) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        second = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nnext"
        await stream.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + second)
        buffered = bytearray()
        with anyio.fail_after(TIMEOUT * 3 + MARGIN):
            assert (await read_response(stream, buffered))[1] == b"hello"
            assert (await read_response(stream, buffered))[1] == b"next"


# The request head's size --------------------------------------------------------------------------
def head_of(size: int) -> bytes:
    """A GET whose head (request line to the empty line included) is exactly ``size`` bytes."""
    start, end = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("whole", [True, False], ids=["one-write", "trickled"])
async def test_a_head_one_byte_over_the_limit_is_answered_431(whole):
    async with listening(hello, max_head_size=2048) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head_of(2048))
            head, body = await read_response(stream, bytearray())
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"hello"
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            data = head_of(2049)
            for i in range(0, len(data), len(data) if whole else 100):
                await stream.send(data[i : i + (len(data) if whole else 100)])
            answer, ended = await until_eof(stream, MARGIN)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
    assert answer.endswith(b"Request head larger than 2048 bytes\n") and ended


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_huge_header_is_refused_before_it_is_read(protocol):
    """4 MiB in one header field: httptools alone keeps it all and uvicorn answers 200."""
    async with listening(hello, protocol) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                pieces = [b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", *[b"a" * 65536] * 64, b"\r\n\r\n"]
                await trickle(stream, iter(pieces), 0)

            tg.start_soon(send)
            data, _ = await until_eof(stream, 5)
            tg.cancel_scope.cancel()
    status = b"200" if protocol is HttpToolsProtocol else b"431"
    assert data.startswith(b"HTTP/1.1 " + status + b" "), data[:100]


async def test_without_httptools_uvicorns_h11_protocol_bounds_an_unfinished_head_with_400():
    """What ``serve`` falls back to when httptools is missing (reversehub.server.serve.config_for):
    uvicorn's h11 protocol refuses a head that is still incomplete past ``h11_max_incomplete_event_size``,
    which ListenerConfig sets to the head size; it has no head timeout and no connection cap."""
    async with listening(hello, "h11", max_head_size=2048) as port:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4096)
        data, ended = await until_eof(stream, MARGIN)
        await stream.aclose()
    assert data.startswith(b"HTTP/1.1 400 ") and ended, data


async def test_many_small_chunks_are_body_not_head():
    """A chunked body's framing (a size line per chunk) is not held by the parser: 30,000 bytes of it
    pass a 1 KiB head limit."""
    async with listening(hello, max_head_size=1024) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        chunks = b"".join(b"1;n=%d\r\n%c\r\n" % (i, 97 + i % 26) for i in range(3000))
        await stream.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == bytes(97 + i % 26 for i in range(3000))


async def test_trailers_count_as_head():
    """Trailer fields after a chunked body are held like header fields: the same limit applies."""
    async with listening(hello, max_head_size=1024) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: ")
        await stream.send(b"a" * 4096)
        data, ended = await until_eof(stream, MARGIN)
    # The request was under way when its trailers grew too large: no response can follow one begun.
    assert ended and not data.startswith(b"HTTP/1.1 200")


# The connection cap --------------------------------------------------------------------------------
async def test_a_connection_past_the_cap_is_answered_503_at_once():
    async with listening(hello, max_connections=3, timeout_keep_alive=30) as port:
        open_streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
        try:
            for stream in open_streams:
                await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_response(stream, bytearray()))[0].startswith(b"HTTP/1.1 200 ")
            async with await anyio.connect_tcp("127.0.0.1", port) as fourth:
                data, ended = await until_eof(fourth, MARGIN)  # before it sends anything
            assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and ended, data
            assert b"\r\nretry-after: 1\r\n" in data and b"\r\nconnection: close\r\n" in data
            # The connections within the cap are still served.
            for stream in open_streams:
                await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_response(stream, bytearray()))[0].startswith(b"HTTP/1.1 200 ")
            await open_streams.pop().aclose()

            async def served() -> bool:
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    data, _ = await until_eof(stream, 0.2)
                return data.startswith(b"HTTP/1.1 200 ")

            await wait_for(served, timeout=5)  # once the server has seen the close, there is room again
        finally:
            for stream in open_streams:
                await stream.aclose()


async def test_a_refused_client_gets_its_answer_even_while_it_is_still_sending():
    """Closing a socket with unread bytes resets the connection, and the client would lose the 431:
    the server shuts down writing and drops what still arrives for LINGER seconds first."""
    async with listening(hello, max_head_size=2048) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        await anyio.sleep(0.1)  # the server has refused, and the rest is unread in its socket
        data, ended = await until_eof(stream, LINGER + MARGIN)
    assert data.startswith(b"HTTP/1.1 431 ") and ended


# reversehub serve --------------------------------------------------------------------------------------
@contextmanager
def serving(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``reversehub serve`` in a process of its own, with ``flags``; yields it and its port once healthy."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [REVERSEHUB, "serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path}/hub.db", *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(log.read_text(errors="replace")[-3000:])  # shown when a test fails


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


SLOWLORIS = 500


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_serve_answers_slowloris_with_408_and_keeps_serving(tmp_path, anyio_backend):
    """Hundreds of connections each trickling header bytes: every one is answered 408 and closed
    within the head timeout (1 s here) and a margin, and a normal request is served meanwhile."""
    timeout = 1.0
    with serving(tmp_path, "--request-head-timeout", str(timeout)) as (_, port):
        outcomes: list[tuple[bytes, bool, float]] = []

        async def loris(i: int) -> None:
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                async with anyio.create_task_group() as tg:
                    start = time.monotonic()
                    tg.start_soon(trickle, stream, slow_head(b"%d" % i), 0.25)
                    data, ended = await until_eof(stream, timeout + 5)
                    outcomes.append((data, ended, time.monotonic() - start))
                    tg.cancel_scope.cancel()

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            async with anyio.create_task_group() as tg:
                for i in range(SLOWLORIS):
                    tg.start_soon(loris, i)
                await anyio.sleep(timeout / 2)
                assert (await client.get("/healthz")).status_code == 200
    assert len(outcomes) == SLOWLORIS
    late = [o for o in outcomes if not (o[0].startswith(b"HTTP/1.1 408 ") and o[1] and o[2] < timeout + 3)]
    assert not late, late[:3]
    assert min(o[2] for o in outcomes) >= timeout - 0.05


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_serve_refuses_a_200_mib_header_without_growing(tmp_path, anyio_backend):
    with serving(tmp_path) as (proc, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(20):  # warm up what a request touches, then measure
                await client.get("/healthz")
        before = rss(proc.pid)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            async with anyio.create_task_group() as tg:
                pieces = [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", *[b"a" * (1 << 20)] * 200, b"\r\n\r\n"]
                tg.start_soon(trickle, stream, iter(pieces), 0)
                data, ended = await until_eof(stream, 30)
                tg.cancel_scope.cancel()
        grown = rss(proc.pid) - before
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200
    assert data.startswith(b"HTTP/1.1 431 ") and ended, data[:200]
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_serve_caps_connections(tmp_path, anyio_backend):
    with serving(tmp_path, "--max-connections", "20") as (_, port):
        held: list[anyio.abc.SocketStream] = []

        async def one_more() -> bool:
            """A connection within the cap (the server may not have seen a closed one go yet)."""
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if (await read_response(stream, bytearray()))[0].startswith(b"HTTP/1.1 200 "):
                held.append(stream)
                return True
            await stream.aclose()
            return False

        try:
            for _ in range(20):
                await wait_for(one_more, timeout=5)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                refused = await client.get("/healthz")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.text == "Too many open connections\n"
            await held[0].send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(held[0], bytearray()))[0].startswith(b"HTTP/1.1 200 ")
        finally:
            for stream in held:
                await stream.aclose()


# Configuration --------------------------------------------------------------------------------------
def test_the_listener_flags_and_variables():
    code, s, output = parse_serve(
        ["--request-head-timeout", "2.5", "--max-connections", "0"], env={"REVERSEHUB_MAX_REQUEST_HEAD_SIZE": "8192"}
    )
    assert code == 0, output
    assert s is not None
    assert (s.request_head_timeout, s.max_request_head_size, s.max_connections) == (2.5, 8192, 0)
    for bad in (["--request-head-timeout", "0"], ["--max-request-head-size", "100"], ["--max-connections", "-1"]):
        assert parse_serve(bad)[0] != 0, bad


def test_the_cap_leaves_file_descriptors_for_the_process_itself():
    assert connection_cap(20_000, 1_048_576) == 20_000
    assert connection_cap(20_000, 20_000) == 20_000 - FD_RESERVE
    assert connection_cap(20_000, 1024) == 768  # a quarter of a small limit
    assert connection_cap(0, 1024) == 0  # no cap asked for: none
    assert connection_cap(500, 0) == 500  # no limit known


def test_serve_raises_its_open_file_limit_and_the_default_cap_holds_10000_polls(settings):
    """The default cap must not refuse what one process is meant to hold (bench/fanout.py: 10,000
    held polls); the soft open-file limit (often 1,024) is raised to the hard one to make room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        config = config_for(create_app(settings), settings)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert isinstance(config, ListenerConfig)
    assert config.limits == ListenerLimits(
        head_timeout=Settings().request_head_timeout,
        max_head_size=Settings().max_request_head_size,
        max_connections=connection_cap(Settings().max_connections, hard),
    )
    assert config.h11_max_incomplete_event_size == Settings().max_request_head_size
    if hard < 10_000 + 2 * FD_RESERVE:
        unavailable(f"the hard open-file limit here ({hard}) is below what 10,000 polls need")
    assert config.limits.max_connections >= 10_000 + FD_RESERVE
