"""The backend side of PTTH (clients/ptth.py) against a small relay written from the draft's text
(draft-kazuho-ptth-ptth-00, "HTTP/1.1"), over real sockets: the handshake, pipelined requests
answered in order, framing, and a relay that answers the upgrade as a plain poll."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from clients import ptth
from relay.wire import HttpRequest, HttpResponse, parse_responses

pytestmark = pytest.mark.anyio

Relay = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def relay(behaviour: Relay) -> AsyncIterator[str]:
    """A TCP server running ``behaviour`` on each connection; yields a request URL on it."""
    server = await asyncio.start_server(behaviour, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/reversehttp/request/cap123?x=1"
    finally:
        server.close()


async def read_head(reader: asyncio.StreamReader) -> list[bytes]:
    return (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[:-2]


def accept(alpn: bytes = b"http%2F1.1", upgrade: bytes = b"ptth") -> bytes:
    return b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: %s\r\nALPN: %s\r\n\r\n" % (
        upgrade,
        alpn,
    )


async def upgrade(url: str) -> ptth.PtthConnection | ptth.PollAnswer:
    return await ptth.upgrade(url, ssl_context=None, connect_timeout=5, read_timeout=5)


async def echo(request: HttpRequest, client: str | None) -> HttpResponse:
    if request.target == "/fail":
        return HttpResponse(200, [("Bad Header", "x")], b"")  # not a token: h11 refuses to write it
    body = f"{request.method} {request.target} {client} {request.header('x-case')} {len(request.body)}".encode()
    return HttpResponse(200, [("Content-Type", "text/plain"), ("X-Mixed-Case", "kept")], body, reason="Fine")


async def exchange(
    requests: bytes,
    done: Callable[[bytes], bool] | None,
    handle: ptth.Serve = echo,
    closing: Callable[[], bool] = lambda: False,
) -> tuple[list[bytes], bytes, ptth.PtthConnection]:
    """A relay that accepts the upgrade and writes ``requests`` with its 101 in one write (the
    backend must not lose the bytes that come with the handshake's answer), then reads answers until
    ``done(data)`` (None: until the backend closes). Returns the upgrade's head, the answers and the
    backend's connection, served until the relay closes it."""
    heads: list[list[bytes]] = []
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_head(reader))
        writer.write(accept() + requests)
        data = b""
        while done is not None and not done(data):
            data += await reader.read(65536)
        got.set_result(data if done is not None else await reader.read())
        writer.close()

    async with relay(behaviour) as url:
        connection = await upgrade(url)
        assert isinstance(connection, ptth.PtthConnection)
        await asyncio.wait_for(connection.serve(handle, closing=closing), 5)
        data = await asyncio.wait_for(got, 5)
    return heads[0], data, connection


async def test_handshake_and_pipelined_requests_answered_in_order() -> None:
    requests = (
        b"GET /relay/a/one HTTP/1.1\r\nHost: a\r\nX-Case: Upper\r\nRequesting-Client: 10.0.0.1:5\r\n\r\n"
        b"POST /relay/a/two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"HEAD /relay/a/three HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    head, data, connection = await exchange(requests, lambda data: data.count(b"HTTP/1.1 200") == 3)
    request_line, *fields = head
    assert request_line == b"GET /reversehttp/request/cap123?x=1 HTTP/1.1"
    names = {f.split(b":")[0].lower(): f.split(b":", 1)[1].strip() for f in fields}
    assert names[b"connection"].lower() == b"upgrade"
    assert names[b"upgrade"] == b"ptth"
    assert names[b"alpn"] == b"http%2F1.1"
    assert data.count(b"X-Mixed-Case: kept") == 3  # names as the handler wrote them
    first, second, third = parse_responses(data, request_methods=["GET", "POST", "HEAD"])
    assert (first.status, first.reason, first.body) == (200, "Fine", b"GET /relay/a/one 10.0.0.1:5 Upper 0")
    assert second.body == b"POST /relay/a/two None None 5"
    # HEAD: the length of what GET would have sent, and no body (RFC 9110 9.3.2).
    assert third.body == b"" and third.header("content-length") == str(len(b"HEAD /relay/a/three None None 0"))
    assert connection.served == 3


async def test_an_invalid_response_becomes_a_500_and_the_connection_goes_on() -> None:
    requests = b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
    _, data, _ = await exchange(requests, lambda data: b"/ok" in data)
    failed, ok = parse_responses(data, request_methods=["GET", "GET"])
    assert failed.status == 500 and ok.status == 200


async def test_closing_answers_the_request_in_hand_with_connection_close() -> None:
    closing = False

    async def handle(request: HttpRequest, client: str | None) -> HttpResponse:
        nonlocal closing
        closing = True  # the endpoint is told to stop while it handles this one
        return HttpResponse(200, [], b"last")

    requests = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    _, data, _ = await exchange(requests, None, handle, lambda: closing)
    (only,) = parse_responses(data, request_methods=["GET"])
    # RFC 9112 9.6: "close" tells the relay that /b, written after /a, was not processed.
    assert only.body == b"last" and only.header("connection") == "close"


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (b'HTTP/1.1 204 No Content\r\nLink: <http://x/next>; rel="next"\r\n\r\n', 204, b""),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\nGET / HTTP/1.1\r\n\r\n", 200, None),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n", 404, b"no\n"),
    ],
)
async def test_a_relay_without_ptth_answers_as_a_poll(answer: bytes, status: int, body: bytes | None) -> None:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer)
        await writer.drain()
        await reader.read()  # the backend closes once it has the answer
        writer.close()

    async with relay(behaviour) as url:
        outcome = await upgrade(url)
    assert isinstance(outcome, ptth.PollAnswer)
    assert outcome.status == status
    assert outcome.body == (body if body is not None else b"GET / HTTP/1.1\r\n\r\n")
    if status == 204:
        assert outcome.headers == [("Link", '<http://x/next>; rel="next"')]


@pytest.mark.parametrize(
    "answer",
    [accept(alpn=b"h2"), accept(upgrade=b"websocket"), b"HTTP/1.1 200 OK\r\nContent-Le", b""],
    ids=["alpn-h2", "other-upgrade", "cut-short", "closed"],
)
async def test_a_bad_handshake_answer_is_an_error(answer: bytes) -> None:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer)
        writer.close()

    async with relay(behaviour) as url:
        with pytest.raises(ptth.PtthError):
            await upgrade(url)


async def test_nothing_listening_is_an_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ptth.PtthError, match="cannot connect"):
        await upgrade(f"http://127.0.0.1:{port}/x")


async def test_the_socket_has_tcp_keepalive() -> None:
    import socket

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(accept())
        await reader.read()
        writer.close()

    async with relay(behaviour) as url:
        connection = await upgrade(url)
        assert isinstance(connection, ptth.PtthConnection)
        sock = connection._writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == ptth.KEEPALIVE_IDLE
        await connection.aclose()


def test_a_proxy_in_the_environment_means_long_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert not ptth.proxied("http://relay.example/r")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert ptth.proxied("https://relay.example/r") and not ptth.proxied("http://relay.example/r")
    monkeypatch.setenv("NO_PROXY", "relay.example")
    assert not ptth.proxied("https://relay.example/r")


@pytest.mark.parametrize(("choice", "keeps_asking"), [("auto", False), ("ptth", True)])
async def test_an_offer_the_relay_refuses_means_long_polling_under_auto(
    choice: str, keeps_asking: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay that offers PTTH but refuses our offer (400, say an ALPN it does not speak) is
    long-polled under ``auto`` at once; ``transport="ptth"`` keeps asking. Either says it once."""
    import logging

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from clients import Endpoint
    from tests.support import serve_live, wait_for

    caplog.set_level(logging.INFO, "clients.endpoint")
    upgrades = polls = 0

    async def register(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        links = f'<{base}/r>; rel="first", <{base}/pub/>; rel="related"'
        return Response(status_code=201, headers={"Link": links, "Location": f"{base}/p"})

    async def request_url(request: Request) -> Response:
        nonlocal upgrades, polls
        if request.headers.get("upgrade"):
            upgrades += 1
            return Response(b"no protocol in ALPN that this relay speaks\n", status_code=400)
        polls += 1
        await asyncio.sleep(0.05)
        return Response(status_code=204, headers={"Link": f'<{request.url}>; rel="next"'})

    async def private(request: Request) -> Response:
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/reversehttp", register, methods=["POST"]),
            Route("/r", request_url),
            Route("/p", private, methods=["DELETE"]),
        ]
    )
    states: list[str] = []
    async with serve_live(app) as url:
        endpoint = Endpoint(
            f"{url}/reversehttp", echo, pollers=1, transport=choice, on_state=states.append, backoff=(0.01, 0.02)
        )  # type: ignore[arg-type]
        async with endpoint:
            if keeps_asking:  # and serves nothing meanwhile: it is not long-polling
                await wait_for(lambda: upgrades >= 3)
                assert polls == 0 and endpoint.transport is None and states == ["registered", "reconnecting"]
            else:
                await wait_for(lambda: polls >= 3)
                assert upgrades == 1
                assert endpoint.transport == "long-poll" and states == ["registered", "long-poll"]
    said = [r for r in caplog.records if "refused the PTTH upgrade" in r.getMessage()]
    assert len(said) == 1 and "ALPN" in said[0].getMessage()
