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
