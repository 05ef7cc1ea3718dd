"""Mailbox names with real ``reversehub serve`` processes and the real client (docs/mailbox.md).

An ``Endpoint(..., mailbox=True)`` application goes away; requests sent meanwhile get 202 with a
Location; the server is SIGKILLed and started again between storing and polling; the application
comes back and gets them in arrival order, and their responses are fetchable at their Locations.
With PostgreSQL and Redis, a request stored by one process is delivered to a poller on another.
"""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from clients.endpoint import Endpoint
from relay.wire import HttpRequest, HttpResponse, parse_request, serialize_response
from tests.live.test_scaleout import FAST, Proc, broker_url, database, launch, path_of, started  # noqa: F401
from tests.relay.helpers import links
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))


class Server:
    """``reversehub serve`` on SQLite, on one port across restarts (Locations carry it)."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.flags = ["--database-url", f"sqlite:///{tmp_path / 'mail.db'}", *flags]
        self.log = tmp_path / "serve.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [REVERSEHUB, "serve", "--port", str(self.port), "--log-level", "warning", *self.flags],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    async def ready(self, client: httpx.AsyncClient) -> None:
        async def up() -> bool:
            assert self.popen is not None and self.popen.poll() is None, self.log.read_text(errors="replace")
            try:
                return (await client.get(self.base + "/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(up, timeout=30, interval=0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    flags = ["--unavailable-timeout", "1", "--poll-timeout", "2", "--reply-timeout", "3", "--mailbox-max-per-name", "5"]
    srv = Server(tmp_path, *flags)
    try:
        yield srv
    finally:
        srv.stop()
        print(srv.log.read_text(errors="replace")[-4000:])  # shown when a test fails


async def test_requests_stored_while_away_survive_a_crash_and_arrive_in_order(server: Server) -> None:
    received: list[bytes] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        received.append(request.body)
        return HttpResponse(200, [("Content-Type", "text/plain")], b"handled " + request.body)

    server.start()
    async with httpx.AsyncClient(timeout=30) as client:
        await server.ready(client)
        gateway = server.base + "/reversehttp"
        async with Endpoint(gateway, handler, name="shop", token="secret", mailbox=True) as endpoint:
            public = endpoint.public_url
            assert public is not None
            # Until its first poll has begun the application counts as away: stored, then delivered.
            first = await client.post(public + "hook", content=b"first")
            assert first.status_code in (200, 202)
            await wait_for(lambda: received == [b"first"], timeout=20)
            live = await client.post(public + "hook", content=b"live")
            assert (live.status_code, live.content) == (200, b"handled live")
        # The application is away (its name kept): requests are stored, 202 with a Location.
        locations = []
        for i in range(5):
            r = await client.post(public + "hook", content=b"event %d" % i)
            assert r.status_code == 202, r.text
            locations.append(r.headers["location"])
            pending = await client.get(r.headers["location"])
            assert pending.status_code == 202
        full = await client.post(public + "hook", content=b"one too many")
        assert full.status_code == 507 and "mailbox" in full.text
        server.kill()  # a crash, not a drain: what was answered 202 was committed before
        server.start()
        await server.ready(client)
        async with Endpoint(gateway, handler, name="shop", token="secret", mailbox=True, pollers=2):
            await wait_for(lambda: len(received) == 7, timeout=20)
            assert received == [b"first", b"live"] + [b"event %d" % i for i in range(5)]

            async def answered() -> bool:
                return all([(await client.get(location)).status_code == 200 for location in locations])

            await wait_for(answered, timeout=20)
            for i, location in enumerate(locations):
                r = await client.get(location)
                assert r.content == b"handled event %d" % i
            back = await client.post(public + "hook", content=b"live again")
            assert (back.status_code, back.content) == (200, b"handled live again")
        assert received.count(b"event 0") == 1


@pytest.mark.postgres
@pytest.mark.redis
async def test_stored_by_one_process_delivered_on_another(launch, broker_url: str, database: str) -> None:  # noqa: F811
    a_port = free_port()
    public = f"http://127.0.0.1:{a_port}"
    flags = ["--database-url", database, "--redis-url", broker_url, "--public-url", public, *FAST]
    a = launch(*flags, port=a_port)
    b = launch(*flags)
    async with httpx.AsyncClient(timeout=30) as client:
        await started(client, a, b)
        r = await client.post(a.base + "/reversehttp", data={"name": "multi", "token": "t", "mailbox": "1"})
        assert r.status_code == 201, r.text
        first = links(r)["first"]
        stored = await client.post(a.base + "/relay/multi/hook", content=b"across")
        assert stored.status_code == 202
        location = stored.headers["location"]
        # The application comes back on the other process.
        poll = await client.get(b.base + path_of(first))
        assert poll.status_code == 200 and parse_request(poll.content).body == b"across"
        reply = serialize_response(HttpResponse(200, [], b"from b", "OK"))
        ack = await client.post(b.base + path_of(first), content=reply, headers={"content-type": "message/http"})
        assert ack.status_code == 202
        assert (await client.get(a.base + path_of(location))).content == b"from b"
        assert (await client.get(b.base + path_of(location))).content == b"from b"


def test_expose_mailbox_needs_a_token() -> None:
    done = subprocess.run(
        [REVERSEHUB, "expose", "shop", "--to", "http://127.0.0.1:9", "--mailbox"], capture_output=True, timeout=60
    )
    assert done.returncode == 2 and b"--mailbox needs --token" in done.stderr


async def test_expose_prints_the_inspector_link_only_on_a_terminal(server: Server) -> None:
    server.start()
    controller, terminal = pty.openpty()
    local = socket.create_server(("127.0.0.1", 0))  # expose checks that something listens at --to
    to = f"http://127.0.0.1:{local.getsockname()[1]}"
    command = [REVERSEHUB, "expose", "--to", to, "--relay", server.base + "/reversehttp"]
    async with httpx.AsyncClient(timeout=30) as client:
        await server.ready(client)
        expose = subprocess.Popen(
            [*command, "cli", "--token", "t", "--mailbox"], stdout=subprocess.PIPE, stderr=terminal
        )
        os.close(terminal)
        try:
            seen = b""
            with anyio.fail_after(30):
                while b"inspect requests: http" not in seen or not seen.endswith(b"\n"):
                    seen += await anyio.to_thread.run_sync(os.read, controller, 4096)
            link = seen.split(b"inspect requests: ")[1].split()[0].decode()
            assert "/reversehttp/p/" in link and link.endswith("/requests")
            assert (await client.get(link)).json()["name"] == "cli"
        finally:
            expose.terminate()
            expose.wait(20)
            os.close(controller)
        piped = subprocess.Popen([*command, "piped", "--token", "u"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = b""
            with anyio.fail_after(30):
                while b"inspect requests" not in line:
                    line = await anyio.to_thread.run_sync(piped.stderr.readline)  # type: ignore[union-attr]
                    assert line, "expose ended before printing the inspector line"
            assert b"only on a terminal" in line and b"/reversehttp/p/" not in line
        finally:
            piped.terminate()
            piped.wait(20)
            local.close()
