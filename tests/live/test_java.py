"""The Java library (clients/java) against a real server on a socket: compiled with plain javac
(JDK 17, no third-party jars), its Endpoint relays a GET and a POST, its Subscriber gets a signed
publish and drops a forged one. Without javac this skips locally and fails in CI."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from reversehub.server.app import create_app
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
    """The Java example of ``page``, wrapped in a main, compiles against the library."""
    text = (JAVA.parents[1] / page).read_text()
    block = re.search(r"```java\n(.*?)```", text, re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    imports = "".join(line + "\n" for line in lines if line.startswith("import "))
    body = "".join(line + "\n" for line in lines if not line.startswith("import "))
    source = tmp_path / "DocExample.java"
    source.write_text(
        f"{imports}public class DocExample {{\npublic static void main(String[] a) throws Exception {{\n{body}}}}}\n"
    )
    subprocess.run(["javac", "-cp", str(classes), "-d", str(tmp_path), str(source)], check=True)


# WebSub 8: the hub picks the algorithm, so the subscriber must check each of them.
@pytest.fixture(params=["sha256", "sha1", "sha384", "sha512"])
async def server(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    async with serving(database_url, signature_algorithm=request.param) as url:
        yield url


@asynccontextmanager
async def serving(database_url: str, port: int | None = None, **overrides: Any) -> AsyncIterator[str]:
    sock = bound_socket() if port is None else socket.create_server(("127.0.0.1", port), reuse_port=False)
    settings = live_settings(database_url, sock.getsockname()[1], **overrides)
    async with serve_live(create_app(settings), sock=sock) as url:
        yield url


class Java:
    """The LiveCheck main as a subprocess: its stdout read line by line, killed if it outlives the test."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, prefix: str, timeout: float = 30.0) -> str:
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            if not raw:
                raise AssertionError(f"java exited (code {self.process.returncode}) before printing {prefix!r}")
            text = raw.decode().rstrip("\n")
            if text.startswith(prefix + " ") or text == prefix:
                return text[len(prefix) + 1 :]


async def start_java(classes: Path, server: str, topic: str) -> Java:
    process = await asyncio.create_subprocess_exec(
        "java", "-cp", str(classes), "LiveCheck", server, topic,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
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
            head = await http.head(public + "hello")
            assert head.status_code == 299
            assert head.headers["x-echo-method"] == "HEAD"
            assert head.content == b""
            posted = await http.post(public + "data", content=b"\x00binary\xffbody")
            assert posted.status_code == 299
            assert posted.headers["x-echo-method"] == "POST"
            assert posted.content == b"\x00binary\xffbody"

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


async def test_java_endpoint_comes_back_after_a_server_restart(classes: Path, database_url: str) -> None:
    """Registrations are rows: after a restart on the same port the pollers reconnect by themselves."""
    topic = f"http://127.0.0.1/topics/java-{uuid.uuid4().hex[:8]}"
    async with serving(database_url) as server:
        port = int(server.rsplit(":", 1)[1])
        java = await start_java(classes, server, topic)
        try:
            public = await java.line("ENDPOINT")
            await java.line("SUBSCRIBED")
            async with httpx.AsyncClient(timeout=20.0) as http:
                assert (await http.get(public + "before")).status_code == 299
        except BaseException:
            java.process.kill()
            raise
    try:
        async with serving(database_url, port=port) as server, httpx.AsyncClient(timeout=20.0) as http:
            deadline = asyncio.get_running_loop().time() + 20
            while (status := (await http.get(public + "after")).status_code) != 299:
                assert asyncio.get_running_loop().time() < deadline, f"still {status} 20 s after the restart"
                await asyncio.sleep(0.2)
    finally:
        if java.process.returncode is None:
            java.process.kill()
            await java.process.wait()
