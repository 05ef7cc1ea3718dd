"""The Java library (clients/java) against a real server on a socket: compiled with plain javac
(JDK 17, no third-party jars), its Endpoint relays a GET and a POST over PTTH (and over long polls
where the server does not offer PTTH), its Subscriber gets a signed publish and drops a forged one.
Without javac this skips locally and fails in CI."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from reversehub.server.app import create_app
from reversehub.server.serve import http_protocol
from tests.support import bound_socket, live_settings, serve_live, unavailable

pytestmark = [pytest.mark.anyio, pytest.mark.live]

JAVA = Path(__file__).resolve().parents[2] / "clients" / "java"


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None:
        unavailable("javac/java (JDK 17) not found (apt-get install openjdk-17-jdk-headless)")
    out = tmp_path_factory.mktemp("java-classes")
    sources = sorted(str(p) for folder in ("src", "test", "example") for p in (JAVA / folder).rglob("*.java"))
    # -Werror on -Xlint:all keeps the library free of unchecked and deprecated calls.
    subprocess.run([javac, "--release", "17", "-Xlint:all", "-Werror", "-d", str(out), *sources], check=True)
    return out


def test_parsing_and_framing(classes: Path) -> None:
    """Link headers, message/http requests and replies, without a server (clients/java/test)."""
    result = subprocess.run(["java", "-cp", str(classes), "reversehub.SelfCheck"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stdout + result.stderr


@pytest.mark.parametrize("page", ["docs/java.md", "README.md"])
def test_docs_example_compiles(classes: Path, tmp_path: Path, page: str) -> None:
    """Each Java example of ``page``, wrapped in a main, compiles against the library."""
    text = (JAVA.parents[1] / page).read_text()
    blocks = re.findall(r"```java\n(.*?)```", text, re.S)
    assert blocks
    for i, block in enumerate(blocks):
        lines = block.splitlines()
        imports = "".join(line + "\n" for line in lines if line.startswith("import "))
        body = "".join(line + "\n" for line in lines if not line.startswith("import "))
        source = tmp_path / f"DocExample{i}.java"
        source.write_text(
            f"{imports}public class DocExample{i} {{\n"
            f"public static void main(String[] a) throws Exception {{\n{body}}}}}\n"
        )
        subprocess.run(["javac", "-cp", str(classes), "-d", str(tmp_path), str(source)], check=True)


# WebSub 8: the hub picks the algorithm, so the subscriber must check each of them.
@pytest.fixture(params=["sha256", "sha1", "sha384", "sha512"])
async def server(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    async with serving(database_url, signature_algorithm=request.param) as url:
        yield url


@asynccontextmanager
async def serving(
    database_url: str, port: int | None = None, ptth: bool = True, **overrides: Any
) -> AsyncIterator[str]:
    """A live server; with ``ptth`` on ``reversehub serve``'s own HTTP protocol, which can take a
    connection over, else on uvicorn's, where an upgrade request is served as the poll it also is."""
    sock = bound_socket() if port is None else socket.create_server(("127.0.0.1", port), reuse_port=False)
    settings = live_settings(database_url, sock.getsockname()[1], **overrides)
    async with serve_live(create_app(settings), sock=sock, http=http_protocol() if ptth else "httptools") as url:
        yield url


class Java:
    """The LiveCheck main as a subprocess: its stdout read line by line, killed if it outlives the test."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def transport(self) -> str:
        """The endpoint's transport() (and the subscriber's, or "-")."""
        await self.say("transport")
        return await self.line("TRANSPORT")

    async def transports(self, want: str, timeout: float = 20) -> None:
        """Waits until the endpoint's transports() (each poller's) print as ``want``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.say("transport")
            got = await self.line("TRANSPORTS")
            if got == want:
                return
            assert asyncio.get_running_loop().time() < deadline, f"transports {got}, not {want}"
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def line(self, prefix: str, timeout: float = 30.0) -> str:
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            if not raw:
                raise AssertionError(f"java exited (code {self.process.returncode}) before printing {prefix!r}")
            text = raw.decode().rstrip("\n")
            if text.startswith(prefix + " ") or text == prefix:
                return text[len(prefix) + 1 :]


async def start_java(
    classes: Path, server: str, topic: str, transport: str = "auto", *jvm: str, stderr: int | None = None
) -> Java:
    process = await asyncio.create_subprocess_exec(
        "java", *jvm, "-cp", str(classes), "LiveCheck", server, topic, transport,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
    )  # fmt: skip
    return Java(process)


async def test_java_endpoint_and_subscriber(classes: Path, server: str) -> None:
    topic = f"{server}/topics/java-{uuid.uuid4().hex[:8]}"
    java = await start_java(classes, server, topic)
    try:
        public = await java.line("ENDPOINT")
        callback = await java.line("SUBSCRIBED")
        async with httpx.AsyncClient(timeout=20.0) as http:
            got = await http.get(public + "hello?x=1", headers={"X-Test-Header": "t1"})
            assert got.status_code == 299
            assert got.headers["x-echo-method"] == "GET"
            assert got.headers["x-echo-target"].endswith("/hello?x=1")
            assert got.headers["x-echo-header"] == "t1"  # looked up case-insensitively
            posted = await http.post(public + "data", content=b"\x00binary\xffbody")
            assert posted.status_code == 299
            assert posted.headers["x-echo-method"] == "POST"
            assert posted.content == b"\x00binary\xffbody"
            # The server offers PTTH: the endpoint and the subscriber's endpoint both use it.
            assert await java.transport() == "PTTH PTTH"

            # Forged (a wrong key) and unsigned bodies: 2xx, so a forger learns nothing, and dropped.
            forged = b"forged"
            bad = "sha256=" + hmac.new(b"not the secret", forged, hashlib.sha256).hexdigest()
            answer = await http.post(callback, content=forged, headers={"X-Hub-Signature": bad})
            assert 200 <= answer.status_code < 300
            answer = await http.post(callback, content=b"unsigned")
            assert 200 <= answer.status_code < 300
            # A verification for a topic it never asked for is refused (WebSub 5.3).
            other = await http.get(
                callback, params={"hub.mode": "subscribe", "hub.topic": f"{server}/topics/other", "hub.challenge": "c"}
            )
            assert other.status_code == 404

            published = await http.post(f"{server}/publish", params={"hub.topic": topic}, content=b"from the hub")
            assert published.status_code < 300
            # The first update printed is the hub's: the forged and unsigned bodies never reached it.
            assert base64.b64decode(await java.line("UPDATE")) == b"from the hub"

            # Closing while a request is being handled: it is answered first.
            slow = asyncio.create_task(http.get(public + "slow"))
            await java.line("HANDLING")
            assert java.process.stdin is not None
            java.process.stdin.write(b"quit\n")
            await java.process.stdin.drain()
            assert (await slow).status_code == 299
            await java.line("CLOSED")
            assert await asyncio.wait_for(java.process.wait(), 20) == 0
            # Closing gave the name up (DELETE on the private URL).
            gone = await http.get(public + "hello")
            assert gone.status_code == 404
    finally:
        if java.process.returncode is None:
            java.process.kill()
            await java.process.wait()


async def test_java_subscriber_renews_its_lease(classes: Path, database_url: str) -> None:
    """A 2 s hub lease: without renewals the subscription would have expired before the publish."""
    async with serving(database_url, hub_lease_min=1, hub_lease_default=2) as server:
        topic = f"{server}/topics/java-{uuid.uuid4().hex[:8]}"
        java = await start_java(classes, server, topic)
        try:
            await java.line("SUBSCRIBED")
            await asyncio.sleep(5)
            async with httpx.AsyncClient(timeout=20.0) as http:
                published = await http.post(f"{server}/publish", params={"hub.topic": topic}, content=b"later")
                assert published.status_code < 300
            assert base64.b64decode(await java.line("UPDATE")) == b"later"
        finally:
            if java.process.returncode is None:
                java.process.kill()
                await java.process.wait()


@pytest.mark.parametrize("fresh", [False, True], ids=["same-database", "fresh-database"])
async def test_java_endpoint_comes_back_after_a_server_restart(
    classes: Path, database_url: str, _template_db: Path, tmp_path: Path, fresh: bool
) -> None:
    """The PTTH connections drop with the server; they come back by themselves on the same port: on
    their request URLs where the registration survived (its row), by registering again (404) where
    it did not."""
    topic = f"http://127.0.0.1/topics/java-{uuid.uuid4().hex[:8]}"
    async with serving(database_url) as server:
        port = int(server.rsplit(":", 1)[1])
        java = await start_java(classes, server, topic)
        try:
            public = await java.line("ENDPOINT")
            await java.line("SUBSCRIBED")
            async with httpx.AsyncClient(timeout=20.0) as http:
                assert (await http.get(public + "before")).status_code == 299
            assert await java.transport() == "PTTH PTTH"
        except BaseException:
            await java.stop()
            raise
    if fresh:
        shutil.copyfile(_template_db, tmp_path / "fresh.db")
        database_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    try:
        async with serving(database_url, port=port) as server, httpx.AsyncClient(timeout=20.0) as http:
            deadline = asyncio.get_running_loop().time() + 20
            while (status := (await http.get(public + "after")).status_code) != 299:
                assert asyncio.get_running_loop().time() < deadline, f"still {status} 20 s after the restart"
                await asyncio.sleep(0.2)
            assert await java.transport() == "PTTH PTTH"
    finally:
        await java.stop()


async def exercise(public: str, verify: ssl.SSLContext | bool = True) -> None:
    """Two HEADs, a GET with a header, and a binary POST through the echo endpoint at ``public``."""
    async with httpx.AsyncClient(timeout=20.0, verify=verify) as http:
        # First, so that over PTTH it is the first request on its connection.
        head = await http.head(public + "hello")
        assert (head.status_code, head.headers.get("x-echo-method"), head.content) == (299, "HEAD", b"")
        sized = await http.head(public + "sized")  # answered with a body: its length, not the body
        assert (sized.status_code, sized.headers["content-length"], sized.content) == (200, "10", b"")
        got = await http.get(public + "hello?x=1", headers={"X-Test-Header": "t1"})
        assert (got.status_code, got.headers["x-echo-method"], got.headers["x-echo-header"]) == (299, "GET", "t1")
        assert got.headers["x-echo-target"].endswith("/hello?x=1")
        body = bytes(range(256)) * 4096  # 1 MiB, every byte value
        posted = await http.post(public + "data", content=body)
        assert (posted.status_code, posted.headers["x-echo-method"]) == (299, "POST")
        assert posted.content == body


@pytest.mark.parametrize(
    ("offers_ptth", "transport", "used"),
    [
        (False, "auto", "LONG_POLL"),
        (False, "long_poll", "LONG_POLL"),
        (True, "long_poll", "LONG_POLL"),
        (True, "ptth", "PTTH"),
    ],
    ids=["auto-without-ptth", "long-poll-without-ptth", "long-poll-with-ptth", "ptth"],
)
async def test_java_endpoint_transports(
    classes: Path, database_url: str, offers_ptth: bool, transport: str, used: str
) -> None:
    """A server that does not offer PTTH answers the upgrade request as a poll: the endpoint serves
    that request and long-polls from then on. LONG_POLL never asks for PTTH, PTTH always does."""
    async with serving(database_url, ptth=offers_ptth) as server:
        java = await start_java(classes, server, "-", transport)
        try:
            public = await java.line("ENDPOINT")
            await exercise(public)
            assert await java.transport() == f"{used} -"
            await java.transports(f"[{used}, {used}]")  # both pollers
            await java.say("quit")
            await java.line("CLOSED")
            assert await asyncio.wait_for(java.process.wait(), 20) == 0
        finally:
            await java.stop()


async def test_java_endpoint_serves_pipelined_requests_over_ptth(classes: Path, database_url: str) -> None:
    """More requests at once than PTTH connections: the server writes several on one connection
    (--ptth-pipeline), and each requester gets the answer to its own request."""
    async with serving(database_url, ptth_pipeline=8) as server:
        java = await start_java(classes, server, "-", "ptth")
        try:
            public = await java.line("ENDPOINT")
            async with httpx.AsyncClient(timeout=20.0, limits=httpx.Limits(max_connections=64)) as http:

                async def one(i: int) -> None:
                    body = f"body {i} ".encode() * (i + 1)
                    answer = await http.post(f"{public}n/{i}", content=body, headers={"X-Test-Header": str(i)})
                    assert answer.status_code == 299
                    assert answer.headers["x-echo-target"].endswith(f"/n/{i}")
                    assert (answer.headers["x-echo-header"], answer.content) == (str(i), body)

                await asyncio.gather(*(one(i) for i in range(48)))
            assert await java.transport() == "PTTH -"
        finally:
            await java.stop()


@pytest.fixture
def localhost_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate for ``localhost`` only (key, certificate, a Java trust store of it)."""
    openssl, keytool = shutil.which("openssl"), shutil.which("keytool")
    if openssl is None or keytool is None:
        unavailable("openssl and keytool not found")
    key, cert, store = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "trust.p12"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [keytool, "-importcert", "-noprompt", "-alias", "relay", "-file", str(cert), "-keystore", str(store),
         "-storetype", "PKCS12", "-storepass", "changeit"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert, store


@pytest.mark.parametrize("public_host", ["localhost", "127.0.0.1"])
async def test_java_endpoint_over_ptth_with_tls(
    classes: Path, database_url: str, localhost_tls: tuple[Path, Path, Path], public_host: str
) -> None:
    """PTTH over TLS with the JDK's trust store (here one holding the test's certificate). The
    certificate names ``localhost`` only: where the relay's request URLs say ``127.0.0.1`` the
    endpoint refuses the connection (host name verification), and no request reaches it."""
    key, cert, store = localhost_tls
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = live_settings(database_url, port, public_url=f"https://{public_host}:{port}")
    async with serve_live(
        create_app(settings), sock=sock, http=http_protocol(), ssl_certfile=str(cert), ssl_keyfile=str(key)
    ):
        trust = [f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStorePassword=changeit"]
        java = await start_java(
            classes, f"https://localhost:{port}", "-", "auto", *trust, stderr=asyncio.subprocess.PIPE
        )
        try:
            public = await java.line("ENDPOINT")
            if public_host == "localhost":
                await exercise(public, verify=ssl.create_default_context(cafile=str(cert)))
                assert await java.transport() == "PTTH -"
                return
            assert java.process.stderr is not None
            while b"No subject alternative names matching IP address 127.0.0.1" not in (
                await asyncio.wait_for(java.process.stderr.readline(), 20)
            ):
                pass
            assert await java.transport() == "null -"
        finally:
            await java.stop()


# PTTH on the wire ------------------------------------------------------------------------------------
# A relay of a few lines, written from draft-kazuho-ptth-ptth-00's text, so that the test decides
# exactly what reaches the Java endpoint: several requests in one write (pipelined), a malformed one,
# a poll's answer to the upgrade request. The Java side is what is under test here.


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)).decode("latin-1")
    start, *lines = head[:-4].split("\r\n")
    return start, {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


async def read_response(reader: asyncio.StreamReader, method: str) -> tuple[str, dict[str, str], bytes]:
    start, headers = await read_head(reader)
    assert "transfer-encoding" not in headers  # the endpoint always sends Content-Length
    body = b"" if method == "HEAD" else await reader.readexactly(int(headers["content-length"]))
    return start, headers, body


class WireRelay:
    """Registration, upgrade and DELETE; each upgrade on /req/1 is handed to the test's ``upgrades`` queue."""

    def __init__(self) -> None:
        self.upgrades: asyncio.Queue[tuple[dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.polls: asyncio.Queue[tuple[str, dict[str, str], bytes]] = asyncio.Queue()
        self.deleted = asyncio.Event()
        self.registrations = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            start, headers = await read_head(reader)
            method, target, _ = start.split(" ")
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if target == "/reversehttp":
                self.registrations += 1
                writer.write(
                    b'HTTP/1.1 201 Created\r\nLink: </req/%d>; rel="first"\r\nLink: </relay/x/>; rel="related"\r\n'
                    b"Location: /priv/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % self.registrations
                )
            elif target == "/priv/x" and method == "DELETE":
                self.deleted.set()
                writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            elif target == "/req/1" and "upgrade" in headers:
                await self.upgrades.put((headers, reader, writer))
                return  # the test owns the connection now
            elif target == "/req/1" or target == "/req/1/next":
                await self.polls.put((method + " " + target, headers, body))
                if method == "POST":
                    writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                else:
                    await asyncio.sleep(30)  # a long poll that the test never answers
            else:  # other pollers' request URLs: held like a poll with nothing to deliver
                await asyncio.sleep(30)
            await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()


@asynccontextmanager
async def wire_relay() -> AsyncIterator[tuple[WireRelay, str]]:
    relay = WireRelay()
    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield relay, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_java_endpoint_over_ptth_on_the_wire(classes: Path) -> None:
    """The handshake as the draft writes it (a 101 with another ALPN refused), pipelined requests
    answered in order with exact framing, a malformed request closing the connection, and a poll's
    answer to the upgrade served as a poll."""
    async with wire_relay() as (relay, url):
        java = await start_java(classes, url, "-", "auto")
        try:
            await java.line("ENDPOINT")
            headers, reader, writer = await asyncio.wait_for(relay.upgrades.get(), 20)
            assert headers["connection"].lower() == "upgrade"
            assert headers["upgrade"] == "ptth"
            assert headers["alpn"] == "http%2F1.1"
            assert headers["host"] == url.removeprefix("http://")
            # A 101 choosing a protocol it did not offer: the endpoint hangs up and asks again.
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n\r\n"
            )
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 20) == b""
            writer.close()
            headers, reader, writer = await asyncio.wait_for(relay.upgrades.get(), 20)
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n"
            )
            # Three requests in one write: Content-Length, chunked (with a trailer), and HEAD.
            writer.write(
                b"POST /relay/x/one?a=1 HTTP/1.1\r\nHost: relay\r\nX-Test-Header: first\r\n"
                b"Content-Length: 5\r\n\r\nhello"
                b"PUT /relay/x/two HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4;x=y\r\n\x00\xff\r\n\r\n0\r\nTrailer: z\r\n\r\n"
                b"HEAD /relay/x/three HTTP/1.1\r\nHost: relay\r\n\r\n"
            )
            await writer.drain()
            start, got, body = await read_response(reader, "POST")
            assert start == "HTTP/1.1 299 Echo Reason"
            assert (got["x-echo-method"], got["x-echo-target"], got["x-echo-header"], body) == (
                "POST", "/relay/x/one?a=1", "first", b"hello",
            )  # fmt: skip
            start, got, body = await read_response(reader, "PUT")
            assert (got["x-echo-method"], got["x-echo-target"], body) == ("PUT", "/relay/x/two", b"abc\x00\xff\r\n")
            start, got, body = await read_response(reader, "HEAD")
            assert (start, got["x-echo-method"], body) == ("HTTP/1.1 299 Echo Reason", "HEAD", b"")
            assert await java.transport() == "PTTH -"

            # A request it cannot frame (Content-Length and Transfer-Encoding at once): closed, unanswered.
            writer.write(
                b"POST /relay/x/bad HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 20) == b""
            writer.close()

            # It comes back on the same request URL; this time the upgrade is answered as a long poll
            # (a relay without PTTH): the request is served by POSTing the reply, then it long-polls.
            headers, reader, writer = await asyncio.wait_for(relay.upgrades.get(), 20)
            request = b"GET /relay/x/polled HTTP/1.1\r\nHost: relay\r\nX-Test-Header: polled\r\n\r\n"
            writer.write(
                b'HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nLink: </req/1/next>; rel="next"\r\n'
                b"Content-Length: %d\r\n\r\n%s" % (len(request), request)
            )
            await writer.drain()
            writer.close()
            what, headers, body = await asyncio.wait_for(relay.polls.get(), 20)
            assert what == "POST /req/1"
            assert headers["content-type"] == "message/http"
            assert body.startswith(b"HTTP/1.1 299 Echo Reason\r\n") and b"X-Echo-Header: polled\r\n" in body
            what, headers, _ = await asyncio.wait_for(relay.polls.get(), 20)
            assert what == "GET /req/1/next" and "upgrade" not in headers
            assert await java.transport() == "LONG_POLL -"

            # The other poller waits for the answer to its upgrade request, which never comes: close()
            # ends that wait by closing the socket (a join would give up only after 10 s).
            await java.say("quit")
            await java.line("CLOSED", timeout=6)
            assert await asyncio.wait_for(java.process.wait(), 20) == 0
            assert relay.deleted.is_set()
        finally:
            await java.stop()
