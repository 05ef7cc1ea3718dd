"""PTTH against a running ``reversehub serve``, with backends written from the drafts' text.

- draft-kazuho-ptth-ptth-00, HTTP/1.1 form: ``GET`` + ``Connection: upgrade`` + ``Upgrade: ptth`` +
  ``ALPN``; the proxy answers 101 with ``ALPN: <chosen>`` and then sends requests on the connection.
- PTTH/1.0 (draft-lentczner-rhttp-00, the Second Life transcript): ``POST`` (or ``GET``) with
  ``Upgrade: PTTH/1.0``; 101 with ``Upgrade: PTTH/1.0``; then the server is the HTTP client.

The backend here is plain sockets and a few lines of HTTP/1.1 reading, on purpose: no part of the
relay's own code speaks for it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.relay.helpers import links
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))


@dataclass
class Server:
    base: str
    port: int
    log: Path
    popen: subprocess.Popen[bytes]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def _start(tmp: Path, *flags: str) -> Server:
    port = free_port()
    log = Path(tempfile.mkstemp(dir=tmp, suffix=".log")[1])
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [
                REVERSEHUB,
                "serve",
                "--port",
                str(port),
                "--database-url",
                f"sqlite:///{tmp}/ptth-{port}.db",
                "--unavailable-timeout",
                "2",
                "--reply-timeout",
                "5",
                "--ptth-pipeline",
                "2",
                "--max-ptth-per-name",
                "3",
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Server(f"http://127.0.0.1:{port}", port, log, popen)


def _stop(server: Server) -> None:
    if server.popen.poll() is None:
        server.popen.terminate()
        try:
            server.popen.wait(20)
        except subprocess.TimeoutExpired:
            server.popen.kill()
    server.popen.wait(10)
    print(f"--- {server.base} exited {server.popen.returncode}:\n{server.output()}")


async def _ready(server: Server) -> None:
    async def up() -> bool:
        assert server.popen.poll() is None, server.output()
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(server.base + "/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(up, timeout=30, interval=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (pipeline 2, at most 3 connections per name); each test its names."""
    proc = _start(tmp_path_factory.mktemp("ptth"))
    try:
        yield proc
    finally:
        _stop(proc)


@pytest.fixture
async def live(server: Server) -> AsyncIterator[Server]:
    await _ready(server)
    yield server


_names = iter(range(1_000_000))


async def register(server: Server, name: str | None = None) -> tuple[str, str, str]:
    """A fresh registration: its name, the path of its request URL, its private URL."""
    name = name or f"ptth{os.getpid()}x{next(_names)}"
    async with httpx.AsyncClient() as client:
        r = await client.post(server.base + "/reversehttp", data={"name": name, "token": "t"})
    assert r.status_code in (201, 204), r.text
    link = links(r)
    return name, httpx.URL(link["first"]).raw_path.decode(), r.headers["location"]


# A backend, from the drafts' text -----------------------------------------------------------------
class Backend:
    """One transposed connection, backend side: read requests, write responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @property
    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    async def request(self, timeout: float = 10) -> bytes:
        """The next request, whole (head and Content-Length body), as the proxy wrote it."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        return head + (await self.reader.readexactly(length) if length else b"")

    def respond(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass

    async def closed_by_peer(self, timeout: float = 10) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""


async def handshake(server: Server, path: str, request: bytes) -> Backend:
    """Send ``request`` (a handshake, ``{path}`` filled in) and read the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request.replace(b"{path}", path.encode()))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return Backend(reader, writer, head)


DRAFT = b"GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: h2, http%2F1.1\r\n\r\n"
LEGACY = b"POST {path} HTTP/1.1\r\nHost: localhost:9999\r\nAccept-Encoding: identity\r\nUpgrade: PTTH/1.0\r\n\r\n"


async def connect(server: Server, path: str, form: bytes = DRAFT) -> Backend:
    backend = await handshake(server, path, form)
    assert backend.status_line == b"HTTP/1.1 101 Switching Protocols", backend.head
    return backend


async def raw_request(server: Server, request: bytes, timeout: float = 10) -> bytes:
    """One request on a fresh connection; everything the server sends until it closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length and not request.startswith(b"HEAD ") else b""
    writer.close()
    return head + body


# Handshakes ---------------------------------------------------------------------------------------
async def test_draft_handshake_answers_101_with_the_chosen_alpn(live):
    _, path, _ = await register(live)
    backend = await connect(live, path)
    assert backend.header("Upgrade") == "ptth"
    assert backend.header("Connection") == "upgrade"
    assert backend.header("ALPN") == "http%2F1.1"
    await backend.close()


async def test_legacy_handshake_answers_101_with_ptth_1_0(live):
    _, path, _ = await register(live)
    backend = await connect(live, path, LEGACY)
    assert backend.header("Upgrade") == "PTTH/1.0"
    assert backend.header("Connection").lower() == "upgrade"
    await backend.close()


@pytest.mark.parametrize("form", [DRAFT, LEGACY], ids=["draft", "PTTH/1.0"])
async def test_a_request_reaches_the_backend_as_sent_and_its_response_as_written(live, form):
    name, path, _ = await register(live)
    backend = await connect(live, path, form)
    sent = (
        f"POST /relay/{name}/hello?x=1 HTTP/1.1\r\nHost: example\r\nX-Mixed-Case: Yes\r\n"
        "content-type: text/plain\r\nContent-Length: 4\r\n\r\nping"
    ).encode()
    requester = asyncio.ensure_future(raw_request(live, sent))
    assert await backend.request() == sent
    backend.respond(b"HTTP/1.1 299 Custom Reason\r\nX-App: One\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\n\r\nhello")
    answer = await requester
    assert answer.startswith(b"HTTP/1.1 299 Custom Reason\r\n")
    assert b"\r\nX-App: One\r\nSet-Cookie: a=1\r\n" in answer
    assert answer.endswith(b"\r\n\r\nhello")
    # The connection stays: a second request comes on it.
    requester = asyncio.ensure_future(raw_request(live, f"GET /relay/{name}/2 HTTP/1.1\r\nHost: e\r\n\r\n".encode()))
    assert (await backend.request()).startswith(f"GET /relay/{name}/2 HTTP/1.1\r\n".encode())
    backend.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    answer = await requester
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nabc")
    await backend.close()


@pytest.mark.parametrize(
    ("request_text", "status", "says"),
    [
        (b"GET {path} HTTP/1.1\r\nHost: r\r\nConnection: upgrade\r\nUpgrade: ptth\r\n\r\n", 400, b"ALPN"),
        (
            b"GET {path} HTTP/1.1\r\nHost: r\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n\r\n",
            400,
            b"http%2F1.1",
        ),
        (
            b"POST {path} HTTP/1.1\r\nHost: r\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n"
            b"Content-Length: 0\r\n\r\n",
            400,
            b"GET",
        ),
    ],
    ids=["no-alpn", "h2-only", "draft-with-post"],
)
async def test_bad_handshakes_are_refused_with_a_reason(live, request_text, status, says):
    _, path, _ = await register(live)
    answer = await handshake(live, path, request_text)
    assert answer.status_line.startswith(b"HTTP/1.1 %d " % status)
    body = await asyncio.wait_for(answer.reader.read(200), 5)
    assert says in body
    await answer.close()


@pytest.mark.parametrize("form", [DRAFT, LEGACY], ids=["draft", "PTTH/1.0"])
async def test_an_unknown_request_url_is_404(live, form):
    answer = await handshake(live, "/reversehttp/r/" + "x" * 43, form)
    assert answer.status_line.startswith(b"HTTP/1.1 404 ")
    await answer.close()


async def test_ptth_1_0_get_without_connection_header_is_taken_too(live):
    """The Second Life transcript sends no ``Connection`` header; AirPlay-style clients do."""
    name, path, _ = await register(live)
    backend = await connect(live, path, b"GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: PTTH/1.0\r\n\r\n")
    requester = asyncio.ensure_future(raw_request(live, f"GET /relay/{name}/ HTTP/1.1\r\nHost: h\r\n\r\n".encode()))
    assert (await backend.request()).startswith(f"GET /relay/{name}/ HTTP/1.1".encode())
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await requester).endswith(b"\r\n\r\nok")
    await backend.close()


def _get(server: Server, name: str, path: str = "") -> asyncio.Future[bytes]:
    return asyncio.ensure_future(raw_request(server, f"GET /relay/{name}/{path} HTTP/1.1\r\nHost: h\r\n\r\n".encode()))


async def _in_step(server: Server, backend: Backend, name: str, word: str) -> None:
    """The connection is still in step: the next request and its response are read as such."""
    requester = _get(server, name, word)
    assert _target(await backend.request()) == f"/relay/{name}/{word}"
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(word), word.encode()))
    assert (await requester).endswith(b"\r\n\r\n" + word.encode())


def _target(request: bytes) -> str:
    return request.split(b" ", 2)[1].decode()


async def test_requests_are_pipelined_up_to_the_setting_and_answered_in_order(live):
    name, path, _ = await register(live)
    backend = await connect(live, path)
    requesters = [_get(live, name, str(i)) for i in range(3)]
    # Two are written before either is answered (--ptth-pipeline 2); the third waits for room.
    first, second = await backend.request(), await backend.request()
    with pytest.raises(asyncio.TimeoutError):
        await backend.request(timeout=0.5)
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA" + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB")
    third = await backend.request()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nC")
    answers = {_target(first): b"A", _target(second): b"B", _target(third): b"C"}
    assert sorted(answers) == [f"/relay/{name}/{i}" for i in range(3)]
    for i, requester in enumerate(requesters):
        assert (await requester).endswith(b"\r\n\r\n" + answers[f"/relay/{name}/{i}"])
    await backend.close()


async def test_a_connection_lost_mid_request_fails_those_written_and_loses_no_queued_one(live):
    name, path, _ = await register(live)
    backend = await connect(live, path)
    requesters = [_get(live, name, str(i)) for i in range(4)]
    written = {_target(await backend.request()), _target(await backend.request())}
    with pytest.raises(asyncio.TimeoutError):
        await backend.request(timeout=0.3)  # the other two wait: one held for this connection, one queued
    await backend.close()  # lost with two requests in flight
    other = await connect(live, path, LEGACY)
    served = set()
    for _ in range(2):
        served.add(_target(await other.request()))
        other.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nserved")
    assert not served & written and len(served | written) == 4
    for i, requester in enumerate(requesters):
        answer = await requester
        if f"/relay/{name}/{i}" in written:
            assert answer.startswith(b"HTTP/1.1 502 "), answer
        else:
            assert answer.endswith(b"\r\n\r\nserved"), answer
    await other.close()


async def test_a_name_is_served_by_a_poller_and_a_ptth_connection_at_once(live):
    name, path, _ = await register(live)
    backend = await connect(live, path)
    by = {"ptth": 0, "poll": 0}

    async def ptth_side() -> None:
        while True:
            await backend.request(timeout=30)
            by["ptth"] += 1
            backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nptth")

    async def poll_side() -> None:
        url = live.base + path
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                r = await client.get(url)
                if r.status_code == 204:
                    continue
                by["poll"] += 1
                reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npoll"
                await client.post(url, content=reply, headers={"content-type": "message/http"})
                url = links(r)["next"]

    sides = [asyncio.ensure_future(ptth_side()), asyncio.ensure_future(poll_side())]
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(12):
                r = await client.get(f"{live.base}/relay/{name}/{i}")
                assert r.status_code == 200 and r.text in ("ptth", "poll")
    finally:
        for side in sides:
            side.cancel()
    assert by["ptth"] >= 2 and by["poll"] >= 2, by
    await backend.close()


@pytest.mark.parametrize(
    ("method", "response", "expect_head", "expect_body"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", b"\r\nContent-Length: 42\r\n", b""),
        ("HEAD", b"HTTP/1.1 200 OK\r\nX-Length: unknown\r\n\r\n", b"\r\nX-Length: unknown\r\n", b""),
        ("GET", b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n", b""),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 42\r\n\r\n', b"HTTP/1.1 304 ", b""),
        ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"200 OK", b"hi"),
    ],
    ids=["HEAD", "HEAD-without-length", "204", "304", "100-then-200"],
)
async def test_bodiless_responses_are_framed_per_rfc_9112(live, method, response, expect_head, expect_body):
    name, path, _ = await register(live)
    backend = await connect(live, path)
    requester = asyncio.ensure_future(
        raw_request(live, f"{method} /relay/{name}/ HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    )
    assert (await backend.request()).startswith(method.encode())
    backend.respond(response)
    answer = await requester
    assert expect_head in answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == expect_body
    # The connection is still in step: the next response is read as such.
    await _in_step(live, backend, name, "next")
    await backend.close()


async def test_a_head_behind_a_get_waits_for_its_response(live):
    """A HEAD's response has no body whatever its Content-Length says: nothing is pipelined with it."""
    name, path, _ = await register(live)
    backend = await connect(live, path)
    get = _get(live, name, "get")
    assert _target(await backend.request()) == f"/relay/{name}/get"
    head = asyncio.ensure_future(raw_request(live, f"HEAD /relay/{name}/head HTTP/1.1\r\nHost: h\r\n\r\n".encode()))
    with pytest.raises(asyncio.TimeoutError):
        await backend.request(timeout=0.3)
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget")
    assert (await backend.request()).startswith(f"HEAD /relay/{name}/head".encode())
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    assert (await get).endswith(b"get")
    assert b"Content-Length: 3" in await head
    await backend.close()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x7fb\r\nContent-Length: 1\r\n\r\nx",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    ],
    ids=["control-char", "DEL", "garbage", "101"],
)
async def test_an_invalid_response_is_502_and_closes_the_connection(live, response):
    name, path, _ = await register(live)
    backend = await connect(live, path)
    requester = _get(live, name)
    await backend.request()
    backend.respond(response)
    assert (await requester).startswith(b"HTTP/1.1 502 ")
    assert await backend.closed_by_peer()


async def test_a_response_over_the_reply_limit_is_502(tmp_path):
    server = _start(tmp_path, "--max-queued-bytes-per-name", "1000")
    try:
        await _ready(server)
        name, path, _ = await register(server)
        backend = await connect(server, path)
        requester = _get(server, name)
        await backend.request()
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        assert (await requester).startswith(b"HTTP/1.1 502 ")
        assert await backend.closed_by_peer()
    finally:
        _stop(server)


async def test_connection_close_requeues_what_was_written_after_it(live):
    name, path, _ = await register(live)
    backend = await connect(live, path)
    first, second = _get(live, name, "1"), _get(live, name, "2")
    targets = [_target(await backend.request()), _target(await backend.request())]
    backend.respond(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nlast")
    assert await backend.closed_by_peer()
    other = await connect(live, path)
    assert _target(await other.request()) == targets[1]  # not processed by the first: sent again
    other.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
    answers = dict(zip(targets, [b"last", b"again"], strict=True))
    assert (await first).endswith(answers[f"/relay/{name}/1"])
    assert (await second).endswith(answers[f"/relay/{name}/2"])
    await other.close()


async def test_deleting_the_registration_closes_its_connections_after_their_replies(live):
    name, path, private = await register(live)
    backend = await connect(live, path)
    requester = _get(live, name)
    await backend.request()
    async with httpx.AsyncClient() as client:
        assert (await client.delete(private)).status_code == 204
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstill")
    assert (await requester).endswith(b"\r\n\r\nstill")
    assert await backend.closed_by_peer()


async def test_connections_per_name_are_bounded_and_counted(live):
    name, path, _ = await register(live)
    backends = [await connect(live, path) for _ in range(3)]
    refused = await handshake(live, path, DRAFT)
    assert refused.status_line.startswith(b"HTTP/1.1 503 ")
    assert refused.header("Retry-After")
    async with httpx.AsyncClient() as client:
        text = (await client.get(live.base + "/metrics")).text
    gauge = [line for line in text.splitlines() if line.startswith("relay_ptth_connections ")]
    assert gauge and float(gauge[0].split()[1]) >= 3
    for backend in backends:
        await backend.close()


async def test_shutdown_closes_ptth_connections_cleanly(tmp_path):
    server = _start(tmp_path)
    try:
        await _ready(server)
        name, path, _ = await register(server)
        backend = await connect(server, path)
        requester = _get(server, name)
        await backend.request()
        server.popen.terminate()
        # The request in flight is still answered, then the connection closes and the server exits.
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
        assert (await requester).endswith(b"bye")
        assert await backend.closed_by_peer()
        assert await asyncio.to_thread(server.popen.wait, 15) == 0
    finally:
        _stop(server)


async def test_the_requesters_hop_by_hop_fields_stay_off_the_ptth_connection(live):
    """A requester's ``Connection: close`` (or HTTP/1.0) is about its own connection: passed on, it
    would make the application close the one that serves everybody (RFC 9110 7.6.1)."""
    name, path, _ = await register(live)
    backend = await connect(live, path)
    sent = (
        f"GET /relay/{name}/old HTTP/1.0\r\nHost: h\r\nConnection: close, X-Private\r\nX-Private: 1\r\n"
        "Keep-Alive: timeout=5\r\nX-Kept: Yes\r\n\r\n"
    ).encode()
    requester = asyncio.ensure_future(raw_request(live, sent))
    assert await backend.request() == f"GET /relay/{name}/old HTTP/1.1\r\nHost: h\r\nX-Kept: Yes\r\n\r\n".encode()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await requester).endswith(b"\r\n\r\nok")
    await _in_step(live, backend, name, "after")
    await backend.close()


async def test_a_response_without_framing_ends_with_the_connection(live):
    """RFC 9112 6.3 rule 8: without Content-Length or chunked, the body runs to the connection's end."""
    name, path, _ = await register(live)
    backend = await connect(live, path)
    requester = _get(live, name)
    await backend.request()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    await backend.close()
    answer = await requester
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nuntil the end")


async def test_too_many_response_headers_are_502(live):
    name, path, _ = await register(live)
    backend = await connect(live, path)
    requester = _get(live, name)
    await backend.request()
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    backend.respond(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n")
    assert (await requester).startswith(b"HTTP/1.1 502 ")
    assert await backend.closed_by_peer()
