"""hub.sender against a tiny scripted asyncio server: what h11 does for us (framing of chunked and
read-to-close responses, whether a connection may be reused, rejecting malformed responses)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from hub.sender import MAX_DRAIN, Sender, SendError

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
