"""SSRF checks that hold over real sockets: DNS rebinding, pinned connections, and a tarpit.

The system resolver is replaced for one made-up name only (``socket.getaddrinfo``, which asyncio,
anyio and httpx all reach), so every lookup anywhere in the process sees that name's answers change
between two lookups, as a rebinding attacker's DNS server would make them. Loopback listeners record
every connection they get.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.errors import FetchFailed
from reversehub.core.egress import Egress, EgressTransport
from reversehub.core.outbound import LeanOutbound, OutboundError
from reversehub.core.sender import Sender
from tests.hub.peers import form
from tests.support import unavailable, wait_for
from tests.test_egress import Stub

pytestmark = [pytest.mark.anyio, pytest.mark.live]

NAME = "rebind.test"


class Listener:
    """A loopback server that records each connection: the request head it read (``b""`` when it
    closed at once) and answers ``ok`` when asked to."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.answer:
            self.heads.append(b"")
            writer.close()
            return
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            head = b""
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()


@asynccontextmanager
async def listening(
    host: str, port: int = 0, *, answer: bool, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Listener, int]]:
    listener = Listener(answer)
    server = await asyncio.start_server(listener.handle, host, port, ssl=tls, reuse_address=True)
    try:
        yield listener, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], list[str]]:
    """``lookups = resolver(["93.184.216.34", "127.0.0.1"])``: the system resolver answers NAME with
    these addresses in turn (then the last one again); ``lookups`` grows by one per lookup."""

    def install(answers: list[str]) -> list[str]:
        lookups: list[str] = []
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host not in (NAME, NAME.encode()):
                return real(host, port, *args, **kwargs)
            lookups.append(NAME)
            return real(answers[min(len(lookups), len(answers)) - 1], port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return lookups

    return install


async def test_the_hub_never_connects_to_the_address_a_name_rebinds_to(make_app, resolver) -> None:
    """The first lookup of the name says a public address, every later one 127.0.0.1: verification,
    topic fetch and delivery each resolve once for their connection and refuse what they got."""
    lookups = resolver(["93.184.216.34", "127.0.0.1"])
    async with listening("127.0.0.1", answer=False) as (inside, port):
        app, client = await make_app(allow_private_networks=False, connect_timeout=1.0, verify_timeout=2.0)
        hub, outbound = app.state.hub, app.state.hub.services.outbound
        base = f"http://{NAME}:{port}"
        r = await client.post("/hub", data=form(mode="subscribe", topic="http://hub.test/t", callback=base + "/cb"))
        assert r.status_code == 202
        await wait_for(lambda: hub.verifier.waiting == 0)
        with pytest.raises(FetchFailed, match=f"refused: {NAME} resolves to a loopback"):
            await hub.fetcher.fetch(base + "/feed")
        await hub.guard.check(base + "/cb")  # what the outbox asks before a delivery: no lookup
        with pytest.raises(OutboundError, match=f"refused: {NAME} resolves to a loopback"):
            await outbound.post(base + "/cb", {"Content-Type": "text/plain"}, b"secret?", 2.0)
        assert len(lookups) >= 3
        assert inside.heads == []


async def test_connections_go_to_the_address_that_was_resolved_with_the_name_kept(resolver) -> None:
    """Egress resolves the name (127.0.0.2); the system resolver would say 127.0.0.1. Both the lean
    sender (POST) and httpx (GET) connect to the first, and send the name as the Host."""
    resolver(["127.0.0.1"])
    lookup = Stub({NAME: [["127.0.0.2"]]})
    async with listening("127.0.0.2", answer=True) as (judged, port):
        async with listening("127.0.0.1", port, answer=False) as (other, _):
            outbound = LeanOutbound.default(5.0, egress=Egress(allow_private=True, lookup=lookup), connect_timeout=1.0)
            try:
                assert await outbound.post(f"http://{NAME}:{port}/cb", {}, b"hi", 5.0) == 200
                response = await outbound.request("GET", f"http://{NAME}:{port}/feed", timeout=5.0, limit=10)
                assert (response.status, response.body) == (200, b"ok")
            finally:
                await outbound.aclose()
    assert lookup.asked == [NAME, NAME]  # one lookup per connection
    assert [h.split(b"\r\n")[0] for h in judged.heads] == [b"POST /cb HTTP/1.1", b"GET /feed HTTP/1.1"]
    assert all(f"host: {NAME}:{port}".encode() in h.lower() for h in judged.heads)
    assert other.heads == []


@pytest.fixture
def name_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for NAME only (no IP address in it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl not found")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-days", "1", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_checks_the_certificate_against_the_name_not_the_pinned_address(name_cert) -> None:
    cert, key = name_cert
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    lookup = Stub({NAME: [["127.0.0.2"]], "other.test": [["127.0.0.2"]]})
    async with listening("127.0.0.2", answer=True, tls=server_tls) as (server, port):
        egress = Egress(allow_private=True, lookup=lookup)
        client = httpx.AsyncClient(transport=EgressTransport(egress, client_tls), follow_redirects=False)
        outbound = LeanOutbound(client, Sender(ssl_context=client_tls, egress=egress), connect_timeout=1.0)
        try:
            assert await outbound.post(f"https://{NAME}:{port}/cb", {}, b"hi", 5.0) == 200
            response = await outbound.request("GET", f"https://{NAME}:{port}/feed", timeout=5.0, limit=10)
            assert response.body == b"ok"
            # The same address under a name the certificate does not carry: refused by both.
            with pytest.raises(OutboundError, match="certificate not verified"):
                await outbound.post(f"https://other.test:{port}/cb", {}, b"hi", 5.0)
            with pytest.raises(OutboundError, match="certificate not verified"):
                await outbound.request("GET", f"https://other.test:{port}/feed", timeout=5.0, limit=10)
        finally:
            await outbound.aclose()
    assert len([h for h in server.heads if h]) == 2


async def test_a_tarpit_costs_the_connect_timeout_not_the_response_timeout() -> None:
    """A listener whose accept queue is full never completes a handshake: the hub gives up after the
    connect timeout, on both paths, however long the request's own timeout is."""
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(0)
    address = tarpit.getsockname()
    filler = socket.create_connection(address, timeout=1)  # takes the only place in the queue
    outbound = LeanOutbound.default(30.0, egress=Egress(allow_private=True), connect_timeout=0.3)
    url = f"http://127.0.0.1:{address[1]}/cb"
    try:
        started = time.monotonic()
        with pytest.raises(OutboundError, match="timed out"):
            await outbound.post(url, {}, b"x", 30.0)
        with pytest.raises(OutboundError, match="ConnectTimeout"):
            await outbound.request("GET", url, timeout=30.0, limit=10)
        assert time.monotonic() - started < 5.0
    finally:
        await outbound.aclose()
        filler.close()
        tarpit.close()
