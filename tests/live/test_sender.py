"""reversehub.core.sender against a tiny scripted asyncio server: what h11 does for us (framing of chunked and
read-to-close responses, whether a connection may be reused, rejecting malformed responses)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import certifi
import httpx
import pytest

from reversehub.core.sender import MAX_DRAIN, Sender, SendError
from tests.support import unavailable

pytestmark = [pytest.mark.anyio, pytest.mark.live]


@dataclass
class Scripted:
    """Answers each request with the next scripted response; ``None`` closes the connection."""

    responses: list[bytes | None]
    url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.responses:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                response = self.responses.pop(0)
                if response is None:
                    break
                writer.write(response)
                await writer.drain()
                if (
                    b"connection: close" in response.lower()
                    or b"content-length" not in response.lower()
                    and (b"chunked" not in response.lower())
                ):
                    break  # read-to-close / Connection: close: the body ends with the connection
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Scripted]]:
    servers: list[asyncio.Server] = []
    scripts: list[Scripted] = []

    def start(*responses: bytes | None) -> Scripted:
        script = Scripted(list(responses))
        scripts.append(script)
        return script

    async def started(*responses: bytes | None) -> Scripted:
        script = start(*responses)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        script.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb?x=1"
        return script

    yield started  # type: ignore[misc]
    for server in servers:
        server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_content_length_response_keeps_the_connection(serve: Callable[..., asyncio.Future[Scripted]]) -> None:
    script = await serve(OK, b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n")
    sender = Sender()
    assert await sender.post(script.url, {"X-A": "1"}, b"hello", 1.0) == 200
    assert await sender.post(script.url, {}, b"", 1.0) == 410
    assert script.connections == 1
    first = script.requests[0]
    assert first.startswith(b"POST /cb?x=1 HTTP/1.1\r\n")
    assert b"\r\nx-a: 1\r\n" in first.lower() and first.endswith(b"\r\n\r\nhello")
    await sender.aclose()


async def test_chunked_response_is_read_to_its_end_and_the_connection_reused(
    serve: Callable[..., asyncio.Future[Scripted]],
) -> None:
    chunked = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
    script = await serve(chunked, OK)
    sender = Sender()
    assert await sender.post(script.url, {}, b"a", 1.0) == 202
    assert await sender.post(script.url, {}, b"b", 1.0) == 200
    assert script.connections == 1
    await sender.aclose()


async def test_interim_response_is_skipped(serve: Callable[..., asyncio.Future[Scripted]]) -> None:
    script = await serve(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    sender = Sender()
    assert await sender.post(script.url, {}, b"a", 1.0) == 200
    await sender.aclose()


async def test_read_to_close_and_connection_close_are_not_reused(
    serve: Callable[..., asyncio.Future[Scripted]],
) -> None:
    to_close = await serve(b"HTTP/1.1 201 Created\r\n\r\nbody until the end")
    to_close.responses.append(OK)
    sender = Sender()
    assert await sender.post(to_close.url, {}, b"a", 1.0) == 201
    assert await sender.post(to_close.url, {}, b"b", 1.0) == 200
    assert to_close.connections == 2

    closing = await serve(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", OK)
    assert await sender.post(closing.url, {}, b"a", 1.0) == 200
    assert await sender.post(closing.url, {}, b"b", 1.0) == 200
    assert closing.connections == 2
    await sender.aclose()


async def test_a_large_body_is_not_read_and_the_connection_dropped(
    serve: Callable[..., asyncio.Future[Scripted]],
) -> None:
    size = 4 * MAX_DRAIN
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    script = await serve(big, OK)
    sender = Sender()
    assert await sender.post(script.url, {}, b"a", 1.0) == 200
    assert await sender.post(script.url, {}, b"b", 1.0) == 200
    assert script.connections == 2
    await sender.aclose()


async def test_an_idle_connection_closed_by_the_server_is_replaced(
    serve: Callable[..., asyncio.Future[Scripted]],
) -> None:
    script = await serve(OK, None, OK)  # the second request finds the connection closed
    sender = Sender()
    assert await sender.post(script.url, {}, b"a", 1.0) == 200
    assert await sender.post(script.url, {}, b"b", 1.0) == 200
    assert script.connections == 2
    await sender.aclose()


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the connection closes
        None,  # closed without a response
    ],
)
async def test_a_malformed_or_missing_response_is_a_send_error(
    serve: Callable[..., asyncio.Future[Scripted]], response: bytes | None
) -> None:
    script = await serve(response)
    sender = Sender()
    with pytest.raises(SendError):
        await sender.post(script.url, {}, b"a", 1.0)
    await sender.aclose()


async def test_bad_header_and_timeout_are_send_errors(serve: Callable[..., asyncio.Future[Scripted]]) -> None:
    # The rest of the body never comes; the server then waits for a request that never comes.
    script = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhang", OK)
    sender = Sender()
    with pytest.raises(SendError, match="bad request"):
        await sender.post(script.url, {"X-A": "1\r\nX-B: 2"}, b"a", 1.0)
    assert script.connections == 0
    with pytest.raises(SendError, match="timed out"):
        await sender.post(script.url, {}, b"a", 0.05)
    await sender.aclose()


async def test_bytes_after_the_response_mean_a_new_connection(serve: Callable[..., asyncio.Future[Scripted]]) -> None:
    # A second response nobody asked for, right behind the first: it must not pass for the answer
    # to the next request, so the connection goes.
    script = await serve(OK + b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", OK)
    sender = Sender()
    assert await sender.post(script.url, {}, b"a", 1.0) == 200
    assert await sender.post(script.url, {}, b"b", 1.0) == 200
    assert script.connections == 2
    await sender.aclose()


async def test_bytes_on_an_idle_connection_close_it() -> None:
    """The server writes to a pooled connection between two requests: the sender closes it, and
    the next request goes out on a new one."""
    wrote_junk = asyncio.Event()
    saw_close = asyncio.Event()
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(1)  # every request here has a one-byte body
                writer.write(OK)
                if first:
                    await wrote_junk.wait()
                    writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                    if not await reader.read(1):
                        saw_close.set()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb"
    sender = Sender()
    try:
        assert await sender.post(url, {}, b"a", 1.0) == 200
        wrote_junk.set()
        await asyncio.wait_for(saw_close.wait(), 5)
        assert await sender.post(url, {}, b"b", 1.0) == 200
        assert connections == 2
    finally:
        await sender.aclose()
        server.close()


async def test_a_timed_out_exchange_does_not_return_its_connection_to_the_pool(
    serve: Callable[..., asyncio.Future[Scripted]],
) -> None:
    script = await serve(OK, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhang", OK)
    sender = Sender()
    assert await sender.post(script.url, {}, b"a", 1.0) == 200
    with pytest.raises(SendError, match="timed out"):
        await sender.post(script.url, {}, b"b", 0.05)
    assert await sender.post(script.url, {}, b"c", 1.0) == 200
    assert script.connections == 2
    await sender.aclose()


both_loops = pytest.mark.parametrize(
    "anyio_backend",
    [("asyncio", {"use_uvloop": False}), ("asyncio", {"use_uvloop": True})],  # serve runs on uvloop
    ids=["asyncio", "uvloop"],
)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl not found")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls(tls_files: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for 127.0.0.1, and a client context trusting it."""
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


@both_loops
async def test_https_callbacks_keep_alive_and_read_to_close(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], anyio_backend: tuple[str, dict[str, bool]]
) -> None:
    on_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    assert on_uvloop == anyio_backend[1]["use_uvloop"]
    server_context, client_context = tls
    script = Scripted([OK, b"HTTP/1.1 201 Created\r\n\r\nbody until the end", OK])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb"
    sender = Sender(ssl_context=client_context)
    try:
        assert await sender.post(url, {}, b"a", 5.0) == 200
        assert await sender.post(url, {}, b"b", 5.0) == 201  # the body ends when TLS closes
        assert await sender.post(url, {}, b"c", 5.0) == 200
        assert script.connections == 2
        with pytest.raises(SendError, match="certificate not verified"):
            await Sender().post(url, {}, b"d", 5.0)  # httpx's default trust (certifi) does not know it
    finally:
        await sender.aclose()
        server.close()


async def test_without_a_context_the_sender_trusts_what_httpx_trusts(
    tls_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE wins over SSL_CERT_DIR for httpx; OpenSSL's defaults (ssl.create_default_context)
    would read both, and trust a certificate that verification on httpx refuses."""
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    hashed = tmp_path / "certs"
    hashed.mkdir()
    subject_hash = subprocess.run(
        ["openssl", "x509", "-subject_hash", "-noout", "-in", str(cert)], check=True, capture_output=True, text=True
    ).stdout.strip()
    shutil.copyfile(cert, hashed / f"{subject_hash}.0")
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    monkeypatch.setenv("SSL_CERT_DIR", str(hashed))
    script = Scripted([OK])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb"
    sender = Sender()
    try:
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.post(url, content=b"a")
        with pytest.raises(SendError, match="certificate not verified"):
            await sender.post(url, {}, b"a", 5.0)
        monkeypatch.delenv("SSL_CERT_FILE")  # now httpx reads SSL_CERT_DIR: both trust it
        assert await Sender().post(url, {}, b"b", 5.0) == 200
    finally:
        await sender.aclose()
        server.close()


@both_loops
async def test_a_server_choosing_http2_by_alpn_is_refused(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], anyio_backend: tuple[str, dict[str, bool]]
) -> None:
    """The context is shared with httpx, which sets its ALPN list on it (h2 too, were HTTP/2 enabled):
    the sender speaks only HTTP/1.1, so a server that picked h2 gets no HTTP/1.1 bytes."""
    server_context, client_context = tls
    server_context.set_alpn_protocols(["h2"])
    client_context.set_alpn_protocols(["h2", "http/1.1"])
    script = Scripted([OK])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb"
    sender = Sender(ssl_context=client_context)
    try:
        with pytest.raises(SendError, match="h2"):
            await sender.post(url, {}, b"a", 5.0)
        assert script.requests == []
    finally:
        await sender.aclose()
        server.close()


async def test_non_ascii_in_the_request_is_a_bad_request(serve: Callable[..., asyncio.Future[Scripted]]) -> None:
    script = await serve(OK)
    sender = Sender()
    with pytest.raises(SendError, match="bad request"):
        await sender.post(script.url, {"Content-Type": "text/plain; charset=\u00e9"}, b"a", 1.0)
    with pytest.raises(SendError, match="bad request"):
        await sender.post(script.url.replace("/cb", "/caf\u00e9"), {}, b"a", 1.0)
    assert script.connections == 0
    await sender.aclose()
