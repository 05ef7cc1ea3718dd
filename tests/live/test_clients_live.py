"""The Python clients against a real server on a socket: subscribe, verify, deliver, sign, retry,
deduplicate, discover, reconnect after a restart, stop; the relay endpoint; the CLI; the README."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from clients import AsyncSubscriber, ClosedError, Subscriber, SubscriptionError, Update
from reversehub.core.settings import Settings
from reversehub.server.app import create_app
from tests.support import bound_socket, live_settings, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAST = {"backoff": (0.02, 0.2), "verify_timeout": 10.0}


@dataclass
class Server:
    url: str
    settings: Settings
    app: Any = None

    @property
    def hub(self) -> str:
        return f"{self.url}/hub"

    def topic(self, name: str) -> str:
        return f"{self.url}/topics/{name}"


@asynccontextmanager
async def running(settings: Settings, sock: Any) -> AsyncIterator[Server]:
    app = create_app(settings)
    async with serve_live(app, sock=sock) as url:
        yield Server(url, settings, app)


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    sock = bound_socket()
    async with running(live_settings(database_url, sock.getsockname()[1]), sock) as s:
        yield s


class Inbox:
    """A callback that records updates and can be told to fail."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.fail_next = 0
        self.calls = 0

    async def __call__(self, update: Update) -> None:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("callback failed on purpose")
        self.updates.append(update)

    def bodies(self) -> list[bytes]:
        return [u.body for u in self.updates]


async def publish(server: Server, topic: str, body: bytes, content_type: str = "text/plain") -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{server.url}/publish", params={"hub.topic": topic}, content=body, headers={"content-type": content_type}
        )
        assert r.status_code < 300, r.text


async def test_subscribe_receive_stop(server: Server) -> None:
    inbox = Inbox()
    topic = server.topic("news")
    async with AsyncSubscriber(topic, inbox, hub=server.hub, **FAST) as sub:
        assert sub.state == "subscribed"
        assert sub.lease_seconds and sub.lease_seconds > 0
        await publish(server, topic, b"hello")
        await wait_for(lambda: inbox.bodies() == [b"hello"])
        update = inbox.updates[0]
        assert update.topic == topic
        assert update.content_type.startswith("text/plain")
        assert update.id
        public = sub.callback_url
    assert sub.state == "stopped"
    async with httpx.AsyncClient() as http:
        # The name was relinquished: nobody answers at the callback any more.
        assert (await http.get(public)).status_code == 404


async def test_stopped_subscriber_gets_nothing(server: Server) -> None:
    first, second = Inbox(), Inbox()
    topic = server.topic("stop")
    sub = AsyncSubscriber(topic, first, hub=server.hub, **FAST)
    await sub.start()
    await sub.stop()
    async with AsyncSubscriber(topic, second, hub=server.hub, **FAST):
        await publish(server, topic, b"after stop")
        await wait_for(lambda: second.bodies() == [b"after stop"])
    assert first.calls == 0


def sign(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    import hmac

    return f"{algorithm}={hmac.new(secret.encode(), body, algorithm).hexdigest()}"


async def test_verification_only_for_what_was_asked(server: Server) -> None:
    topic = server.topic("verify")
    async with AsyncSubscriber(topic, Inbox(), hub=server.hub, **FAST) as sub, httpx.AsyncClient() as http:
        assert sub.callback_url is not None
        for params in (
            {"hub.mode": "subscribe", "hub.topic": topic, "hub.challenge": "x", "hub.lease_seconds": "60"},
            {"hub.mode": "unsubscribe", "hub.topic": topic, "hub.challenge": "x"},
            {"hub.mode": "subscribe", "hub.topic": server.topic("other"), "hub.challenge": "x"},
        ):
            r = await http.get(sub.callback_url, params=params)
            assert r.status_code == 404, params
            assert "x" not in r.text


async def test_signatures_checked_and_duplicates_dropped(server: Server) -> None:
    inbox = Inbox()
    topic = server.topic("signed")
    async with AsyncSubscriber(topic, inbox, hub=server.hub, **FAST) as sub, httpx.AsyncClient() as http:
        assert sub.callback_url is not None
        body = b"forged"
        for signature in (None, "sha256=" + "0" * 64, sign("wrong secret", body), "md5=abc"):
            headers = {"content-type": "text/plain", "webhook-id": "msg_forged"}
            if signature:
                headers["x-hub-signature"] = signature
            r = await http.post(sub.callback_url, content=body, headers=headers)
            # 2xx so a forger learns nothing (WebSub 7), but the callback never sees it.
            assert 200 <= r.status_code < 300
        assert sub.rejected == 4 and inbox.calls == 0
        for algorithm in ("sha1", "sha512", "sha512"):
            headers = {"content-type": "text/plain", "webhook-id": "msg_1"}
            headers["x-hub-signature"] = sign(sub.secret, b"ok", algorithm)
            r = await http.post(sub.callback_url, content=b"ok", headers=headers)
            assert r.status_code == 204
        assert inbox.bodies() == [b"ok"]  # same webhook-id three times: one callback


async def test_callback_error_makes_the_hub_retry(server: Server) -> None:
    inbox = Inbox()
    inbox.fail_next = 2
    topic = server.topic("retry")
    async with AsyncSubscriber(topic, inbox, hub=server.hub, **FAST):
        await publish(server, topic, b"again")
        await wait_for(lambda: inbox.bodies() == [b"again"])
        assert inbox.calls == 3


async def test_sync_subscriber_from_a_thread(server: Server) -> None:
    import anyio.to_thread

    received: list[bytes] = []
    topic = server.topic("sync")

    def run() -> None:
        with Subscriber(topic, lambda u: received.append(u.body), hub=server.hub, **FAST) as sub:
            assert sub.state == "subscribed"
            with httpx.Client() as http:
                http.post(f"{server.url}/publish", params={"hub.topic": topic}, content=b"from a thread")
            deadline = time.monotonic() + 10
            while received != [b"from a thread"] and time.monotonic() < deadline:
                time.sleep(0.01)  # a blocking caller polls; there is no loop here to await on

    await anyio.to_thread.run_sync(run)
    assert received == [b"from a thread"]


async def test_sync_subscriber_never_returns_an_awaitable(server: Server) -> None:
    """The blocking face blocks, also where a loop is running: start() gives the subscriber back
    (subscribed), stop() gives None, and neither hands out a coroutine to forget to await."""
    import anyio.to_thread

    received: list[bytes] = []
    topic = server.topic("sync-in-a-loop")
    results: list[object] = []

    async def caller_with_a_loop() -> None:
        sub = Subscriber(topic, lambda u: received.append(u.body), hub=server.hub, **FAST)
        started = sub.start()
        results.append(started)
        assert started is sub and sub.state == "subscribed"
        assert sub.callback_url is not None and sub.lease_seconds
        with httpx.Client() as http:
            http.post(f"{server.url}/publish", params={"hub.topic": topic}, content=b"in a loop")
        deadline = time.monotonic() + 10
        while received != [b"in a loop"] and time.monotonic() < deadline:
            time.sleep(0.01)  # this loop is blocked by design; the subscriber's own loop delivers
        results.append(sub.stop())
        results.append(sub.stop())  # idempotent
        assert sub.state == "stopped"

    # The server runs on this test's loop; the caller's loop runs in a thread of its own.
    await anyio.to_thread.run_sync(lambda: asyncio.run(caller_with_a_loop()))
    assert received == [b"in a loop"]
    assert not any(inspect.isawaitable(result) for result in results)
    assert results[1:] == [None, None]


async def test_async_subscriber_under_async_with(server: Server) -> None:
    """The coroutine face: start() and stop() are coroutines, and ``async with`` subscribes and stops."""
    inbox = Inbox()
    topic = server.topic("async-face")
    sub = AsyncSubscriber(topic, inbox, hub=server.hub, **FAST)
    assert inspect.iscoroutinefunction(sub.start) and inspect.iscoroutinefunction(sub.stop)
    assert not hasattr(sub, "__enter__")
    async with sub as entered:
        assert entered is sub and sub.state == "subscribed"
        await publish(server, topic, b"async face")
        await wait_for(lambda: inbox.bodies() == [b"async face"])
    assert sub.state == "stopped"
    with pytest.raises(ClosedError):
        await sub.start()


async def test_registration_lost_reregisters_and_resubscribes(server: Server) -> None:
    inbox = Inbox()
    states: list[str] = []
    topic = server.topic("lost")
    async with AsyncSubscriber(topic, inbox, hub=server.hub, on_state=states.append, **FAST) as sub:
        assert sub._endpoint is not None and sub._endpoint._private_url is not None
        async with httpx.AsyncClient() as http:
            assert (await http.delete(sub._endpoint._private_url)).status_code in (200, 204)
        await wait_for(lambda: states.count("subscribed") >= 2)
        await publish(server, topic, b"still here")
        await wait_for(lambda: inbox.bodies() == [b"still here"])


async def test_lease_is_renewed(database_url: str) -> None:
    sock = bound_socket()
    settings = live_settings(database_url, sock.getsockname()[1], hub_lease_min=1)
    async with running(settings, sock) as server:
        states: list[str] = []
        inbox = Inbox()
        topic = server.topic("lease")
        sub = AsyncSubscriber(topic, inbox, hub=server.hub, lease_seconds=1, on_state=states.append, **FAST)
        async with sub:
            assert sub.lease_seconds == 1
            await wait_for(lambda: states.count("subscribed") >= 3, timeout=10)
            await publish(server, topic, b"renewed")
            await wait_for(lambda: inbox.bodies() == [b"renewed"])


async def test_reconnects_after_the_server_restarts(database_url: str) -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = live_settings(database_url, port)
    inbox = Inbox()
    states: list[str] = []
    topic = f"http://127.0.0.1:{port}/topics/restart"
    async with running(settings, sock) as server:
        sub = AsyncSubscriber(topic, inbox, hub=server.hub, on_state=states.append, **FAST)
        # start() returns once the relay took our echo of the challenge, and the hub stores a
        # subscription it got the echo for even while it stops: stopping the server now loses nothing.
        await sub.start()
    await wait_for(lambda: "reconnecting" in states)
    sock = bound_socket_on(port)
    try:
        async with running(settings, sock) as server:
            await wait_for(lambda: states[-1] in ("connected", "subscribed"), timeout=10)
            await publish(server, topic, b"after restart")
            await wait_for(lambda: inbox.bodies() == [b"after restart"], timeout=10)
            await sub.stop()
    finally:
        # Idempotent; here only when the test failed early.
        await sub.stop()


class HeldEcho(httpx.AsyncHTTPTransport):
    """The subscriber's HTTP, except that its echo of the hub's challenge (a ``message/http`` reply
    carrying a 200) waits for ``release`` before it goes out; ``held`` is set when it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.headers.get("content-type") == "message/http":
            if (await request.aread()).startswith(b"HTTP/1.1 200") and not self.release.is_set():
                self.held.set()
                await self.release.wait()
        return await super().handle_async_request(request)


async def test_start_fails_when_the_server_stops_between_the_challenge_and_the_echo(database_url: str) -> None:
    """The hub's challenge arrived, then the server stopped before our echo reached it: the hub
    never got the echo, so start() must not report a subscription; it raises, and once a server
    is back, start() again subscribes for real."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = live_settings(database_url, port)
    topic = f"http://127.0.0.1:{port}/topics/echo-lost"
    transport = HeldEcho()
    states: list[str] = []
    inbox = Inbox()
    failure: list[BaseException] = []
    sub = AsyncSubscriber(
        topic, inbox, hub=f"http://127.0.0.1:{port}/hub", transport=transport, on_state=states.append, **FAST
    )

    async def start() -> None:
        try:
            await sub.start()
        except SubscriptionError as exc:
            failure.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            async with running(settings, sock):
                tg.start_soon(start)
                await transport.held.wait()  # the challenge is here; our echo has not gone out
            transport.release.set()  # the server is gone: the echo goes out now
        assert len(failure) == 1 and "relay did not take our answer" in str(failure[0])
        assert "subscribed" not in states
        assert await _stored(database_url, topic, sub.callback_url or "") is None

        async with running(settings, bound_socket_on(port)) as server:
            await sub.start()
            assert sub.state == "subscribed"
            await publish(server, topic, b"subscribed for real")
            await wait_for(lambda: inbox.bodies() == [b"subscribed for real"])
            await sub.stop()
    finally:
        await sub.stop()


async def test_a_subscription_the_relay_took_the_echo_for_survives_a_draining_stop(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() returned (the relay took our echo), then the server drains as on SIGTERM while the
    hub is still storing the subscription: the hub finishes that write before it goes."""
    from hub import store
    from reversehub.server.serve import DrainingServer, config_for

    writing, release = anyio.Event(), anyio.Event()
    real = store.activate_many

    async def held(sessions: Any, items: Any) -> Any:
        writing.set()
        await release.wait()
        return await real(sessions, items)

    monkeypatch.setattr(store, "activate_many", held)
    sock = bound_socket()
    settings = live_settings(database_url, sock.getsockname()[1])
    app = create_app(settings)
    server = DrainingServer(config_for(app, settings))
    url = f"http://127.0.0.1:{settings.port}"
    sub = AsyncSubscriber(f"{url}/topics/drain", Inbox(), hub=f"{url}/hub", **FAST)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            await wait_for(lambda: server.started, timeout=20)
            tg.start_soon(sub.start)
            await writing.wait()  # the hub got our echo and is storing the subscription...
            await wait_for(lambda: sub.state == "subscribed")  # ...and start() has returned
            server.should_exit = True  # what SIGTERM does
            await wait_for(lambda: app.state.hub.closing)  # the drain has begun
            # Something that must not happen, so no event says it did not: the drain waits for the
            # commit, so the lifespan's shutdown (which would cancel it) does not begin meanwhile.
            with anyio.move_on_after(0.5):
                await wait_for(lambda: app.state.services is None)
            assert app.state.services is not None
            release.set()
    finally:
        sock.close()
        await sub.stop()
    found = await _stored(database_url, f"{url}/topics/drain", sub.callback_url or "")
    assert found is not None and found.state == "active"


async def _stored(database_url: str, topic: str, callback: str) -> Any:
    from hub import store
    from reversehub.core import db

    engine = db.create_engine(database_url)
    try:
        return await store.find(db.sessionmaker(engine), topic, callback)
    finally:
        await engine.dispose()


def bound_socket_on(port: int) -> Any:
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Test feed</title>
  <id>urn:test:feed</id>
  <updated>2026-01-01T00:00:00Z</updated>
  <link rel="hub" href="{hub}"/>
  <link rel="self" href="{self_url}"/>
{entries}
</feed>
"""
ENTRY = """  <entry><id>urn:test:{n}</id><title>Entry {n}</title><link href="http://example.com/{n}"/>
    <updated>2026-01-01T00:00:0{n}Z</updated></entry>"""


def feed_app(hub: str, self_url: Callable[[], str], entries: list[int], *, in_header: bool) -> Any:
    """A tiny feed publisher: an Atom feed naming its hub in a Link header or in the body."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def feed(request: Any) -> Response:
        body = ATOM.format(
            hub="" if in_header else hub,
            self_url=self_url(),
            entries="\n".join(ENTRY.format(n=n) for n in entries),
        )
        if in_header:
            body = body.replace('  <link rel="hub" href=""/>\n', "")
        headers = {"link": f'<{hub}>; rel="hub", <{self_url()}>; rel="self"'} if in_header else {}
        return Response(body, media_type="application/atom+xml", headers=headers)

    return Starlette(routes=[Route("/feed.xml", feed)])


@pytest.mark.parametrize("in_header", [True, False], ids=["link-header", "atom-link"])
async def test_discovery_and_ping_deliver_new_entries(server: Server, in_header: bool) -> None:
    from clients import AsyncPublisher

    entries = [1]
    base: list[str] = []
    app = feed_app(server.hub, lambda: f"{base[0]}/feed.xml", entries, in_header=in_header)
    async with serve_live(app) as feed_base:
        base.append(feed_base)
        topic = f"{feed_base}/feed.xml"
        inbox = Inbox()
        async with AsyncSubscriber(topic, inbox, **FAST) as sub:  # hub=None: discovered from the feed
            assert sub.hub == server.hub and sub.topic == topic
            entries.append(2)
            async with AsyncPublisher() as publisher:  # the hub is discovered for the ping too
                await publisher.ping(topic)
            await wait_for(lambda: any(u.entries for u in inbox.updates))
            titles = [e.title for u in inbox.updates for e in u.entries]
            assert "Entry 2" in titles
            assert all(u.topic == topic for u in inbox.updates)


async def test_endpoint_serves_an_asgi_app_with_concurrent_pollers(server: Server) -> None:
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from clients import Endpoint

    events: list[str] = []
    gate = anyio.Event()
    inside = 0

    async def item(request: Request) -> JSONResponse:
        nonlocal inside
        inside += 1
        if inside == 3:
            gate.set()
        await gate.wait()  # three requests are in the app at once, one per poller
        body = await request.body()
        return JSONResponse(
            {
                "path": request.url.path,
                "root_path": request.scope["root_path"],
                "id": request.path_params["id"],
                "q": request.query_params.get("q"),
                "body": body.decode(),
                "client": request.client.host if request.client else None,
            }
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/items/{id}", item, methods=["GET", "POST"])], lifespan=lifespan)
    async with Endpoint(f"{server.url}/reversehttp", app=app, name="shop", pollers=3) as endpoint:
        assert events == ["startup"]
        assert endpoint.public_url == f"{server.url}/relay/shop/"
        async with httpx.AsyncClient(base_url=endpoint.public_url) as http:
            results: dict[int, httpx.Response] = {}

            async def call(n: int) -> None:
                results[n] = await http.post(f"items/{n}?q=x{n}", content=f"body {n}")

            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(call, n)
        for n in range(3):
            assert results[n].status_code == 200
            data = results[n].json()
            assert data["id"] == str(n) and data["q"] == f"x{n}" and data["body"] == f"body {n}"
            assert data["root_path"] == "/relay/shop"
            assert data["path"] == f"/relay/shop/items/{n}"
            assert data["client"] == "127.0.0.1"
    assert events == ["startup", "shutdown"]
    async with httpx.AsyncClient() as http:  # relinquished
        assert (await http.get(f"{server.url}/relay/shop/items/1")).status_code == 404


async def test_endpoint_plain_handler_and_errors(server: Server) -> None:
    from clients import Endpoint
    from relay.wire import HttpRequest, HttpResponse

    def handler(request: HttpRequest) -> HttpResponse:
        if request.target.endswith("/boom"):
            raise ValueError("boom")
        return HttpResponse(201, [("content-type", "text/plain"), ("x-seen", request.method)], request.body[::-1])

    async with Endpoint(f"{server.url}/reversehttp", handler) as endpoint, httpx.AsyncClient() as http:
        assert endpoint.public_url is not None
        r = await http.put(endpoint.public_url + "echo", content=b"abc")
        assert (r.status_code, r.content, r.headers["x-seen"]) == (201, b"cba", "PUT")
        assert (await http.get(endpoint.public_url + "boom")).status_code == 500


async def test_endpoint_name_held_by_someone_else(server: Server) -> None:
    from clients import Endpoint, RelayError

    async with Endpoint(f"{server.url}/reversehttp", lambda r: None, name="taken"):  # type: ignore[arg-type,return-value]
        with pytest.raises(RelayError) as info:
            await Endpoint(f"{server.url}/reversehttp", lambda r: None, name="taken").start()  # type: ignore[arg-type,return-value]
        assert info.value.status == 403


# -- the CLI, as a user runs it ------------------------------------------------------------------


class Process:
    """A CLI subprocess whose output lines we await (with a deadline, never a sleep)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Process:
        """``reversehub ARGS...``"""
        return await cls.spawn([str(BIN / "reversehub"), *args])

    @classmethod
    async def spawn(cls, argv: list[str], env: dict[str, str] | None = None) -> Process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT
        )
        return cls(proc)

    async def line(self, stream: str = "stdout", timeout: float = 20) -> str:
        reader = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert reader is not None
        raw = await asyncio.wait_for(reader.readline(), timeout)
        assert raw, f"{stream} closed (exit {self.proc.returncode})"
        return raw.decode().rstrip("\n")

    async def until(self, predicate: Callable[[str], bool], stream: str = "stdout") -> list[str]:
        seen: list[str] = []
        while True:
            seen.append(await self.line(stream))
            if predicate(seen[-1]):
                return seen

    async def interrupt(self) -> int:
        import signal

        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.proc.wait(), 20)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = (await Process.start(*args)).proc
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_subscribe_and_publish(server: Server, tmp_path: Path) -> None:
    import base64
    import json

    topic = server.topic("cli")
    sub = await Process.start("subscribe", topic, "--hub", server.hub, "--json")
    try:
        await sub.until(lambda line: line == "[subscribed]", stream="stderr")
        code, _, err = await run_cli("publish", topic, "--data", "hello cli", "--hub", server.hub)
        assert code == 0, err
        record = json.loads(await sub.line())
        assert record["topic"] == topic and record["body"] == "hello cli" and record["id"]
        payload = tmp_path / "payload.bin"
        payload.write_bytes(b"\xff\x00binary")
        args = ("publish", topic, "--data", f"@{payload}", "--content-type", "application/octet-stream")
        code, _, err = await run_cli(*args, "--hub", server.hub)
        assert code == 0, err
        record = json.loads(await sub.line())
        assert record["content_type"] == "application/octet-stream" and "body" not in record
        assert base64.b64decode(record["body_base64"]) == b"\xff\x00binary"
        assert await sub.interrupt() == 0
        rest = (await sub.proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert "[stopped]" in rest
    finally:
        sub.kill()


async def test_cli_subscribe_readable_and_ping(server: Server) -> None:
    entries = [1]
    base: list[str] = []
    app = feed_app(server.hub, lambda: f"{base[0]}/feed.xml", entries, in_header=False)
    async with serve_live(app) as feed_base:
        base.append(feed_base)
        topic = f"{feed_base}/feed.xml"
        sub = await Process.start("subscribe", topic)  # hub discovered
        try:
            await sub.until(lambda line: line == "[subscribed]", stream="stderr")
            entries.append(2)
            code, _, err = await run_cli("ping", topic)  # hub discovered
            assert code == 0, err
            lines = await sub.until(lambda line: "Entry 2" in line)
            assert lines[0].startswith(f"--- {topic} (application/atom+xml")
            assert any(line.startswith("* Entry 2  http://example.com/2") for line in lines)
            assert await sub.interrupt() == 0
        finally:
            sub.kill()


async def test_cli_expose_forwards_to_a_local_server(server: Server) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"local {request.method} {request.url.path} {request.query_params.get('a')}")

    local_app = Starlette(routes=[Route("/{path:path}", hello, methods=["GET", "POST"])])
    async with serve_live(local_app) as local:
        port = local.rsplit(":", 1)[1]  # --to takes a bare port for a server on 127.0.0.1
        proc = await Process.start("expose", "webapp", "--to", port, "--relay", f"{server.url}/reversehttp")
        try:
            assert await proc.line() == f"{server.url}/relay/webapp/ -> {local}"
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{server.url}/relay/webapp/some/page?a=1")
            assert (r.status_code, r.text) == (200, "local GET /some/page 1")
            assert (await proc.line()).startswith("GET /some/page -> 200 (")
            assert await proc.interrupt() == 0
        finally:
            proc.kill()


def fenced_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.S | re.M)


async def test_feed_watcher_readme(tmp_path: Path) -> None:
    """The example's README walk-through, commands as written (ports swapped for free ones)."""
    from tests.support import free_port

    readme = (ROOT / "examples/feed-watcher/README.md").read_text()
    hub_port, feed_port = free_port(), free_port()

    def local(text: str) -> str:
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{hub_port}").replace("8001", str(feed_port))

    commands = [local(block.strip()) for block in fenced_blocks(readme, "sh")]
    expected = [local(line) for line in fenced_blocks(readme, "text")[0].splitlines()]
    assert len(commands) == 4 and commands[0].startswith("reversehub serve")

    def argv(command: str) -> list[str]:
        words = shlex.split(command)
        program = {"reversehub": str(BIN / "reversehub"), "python": sys.executable}[words[0]]
        return [program, *words[1:]]

    server_env = {
        "REVERSEHUB_PORT": str(hub_port),
        "REVERSEHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'walkthrough.db'}",
        "REVERSEHUB_POLL_TIMEOUT": "1",
    }
    background: list[Process] = []
    try:
        server = await Process.spawn(argv(commands[0]), server_env)
        background.append(server)
        async with httpx.AsyncClient() as http:

            async def healthy() -> bool:
                try:
                    return (await http.get(f"http://127.0.0.1:{hub_port}/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for(healthy, timeout=30)
        publisher = await Process.spawn(argv(commands[1]))
        background.append(publisher)
        assert (await publisher.line()).startswith("serving ")
        watcher = await Process.spawn(argv(commands[2]))
        background.append(watcher)
        await watcher.until(lambda line: line.startswith("watching "), stream="stderr")
        post = await Process.spawn(argv(commands[3]))
        _, err = await asyncio.wait_for(post.proc.communicate(), 30)
        assert post.proc.returncode == 0, err
        assert [await watcher.line() for _ in expected] == expected
        assert await watcher.interrupt() == 0
    finally:
        for proc in reversed(background):
            if proc.proc.returncode is None:
                await proc.interrupt()


# The pages whose client examples run as written, with how many Python examples each has.
EXAMPLE_PAGES = {"README.md": 1, "docs/clients.md": 3}


def clients_blocks(page: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of a page's clients section (the README's) or the whole page."""
    text = (ROOT / page).read_text()
    if "<!-- section:clients -->" in text:
        text = text.split("<!-- section:clients -->")[1].split("<!-- /section:clients -->")[0]
    return re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
async def test_readme_python_examples_run_as_written(server: Server, page: str) -> None:
    blocks = clients_blocks(page)
    ran = 0
    for index, (language, code) in enumerate(blocks):
        if language != "python":
            continue
        code = code.replace("127.0.0.1:8000", server.url.removeprefix("http://"))
        proc = await Process.spawn([sys.executable, "-c", code])
        out, err = await asyncio.wait_for(proc.proc.communicate(), 60)
        assert proc.proc.returncode == 0, err.decode()
        following = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        if following[0] == "text":
            expected = following[1].replace("127.0.0.1:8000", server.url.removeprefix("http://"))
            assert out.decode() == expected
        ran += 1
    assert ran == EXAMPLE_PAGES[page]


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
async def test_readme_cli_example_runs_as_written(server: Server, page: str) -> None:
    host = server.url.removeprefix("http://")
    blocks = [(lang, body.replace("127.0.0.1:8000", host)) for lang, body in clients_blocks(page)]
    shell = [body.strip() for lang, body in blocks if lang == "sh"]
    subscribe_cmd, publish_cmd = shell[0], shell[1]
    expected = next(
        blocks[i + 1][1] for i, (lang, body) in enumerate(blocks) if lang == "sh" and body.strip() == publish_cmd
    )
    words = shlex.split(subscribe_cmd)
    assert words[0] == "reversehub"
    sub = await Process.start(*words[1:])
    try:
        await sub.until(lambda line: line == "[subscribed]", stream="stderr")
        # The README's publish uses the default hub (127.0.0.1:8000): point the default at this server.
        env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "REVERSEHUB_HUB": server.hub}
        publisher = await Process.spawn(["bash", "-c", publish_cmd], env)
        _, err = await asyncio.wait_for(publisher.proc.communicate(), 30)
        assert publisher.proc.returncode == 0, err.decode()
        assert [await sub.line() for _ in expected.splitlines()] == expected.splitlines()
        assert await sub.interrupt() == 0
    finally:
        sub.kill()


async def test_refused_subscription_raises_and_cleans_up(server: Server) -> None:
    from clients import SubscriptionError

    sub = AsyncSubscriber(server.topic("refused"), Inbox(), hub=server.hub, lease_seconds=-5, **FAST)
    with pytest.raises(SubscriptionError, match="HTTP 400"):
        await sub.start()
    assert sub._endpoint is not None and sub._endpoint.state == "closed"  # the name was given back


async def test_denied_subscription_raises(database_url: str) -> None:
    from clients import SubscriptionError

    sock = bound_socket()
    settings = live_settings(database_url, sock.getsockname()[1], deny_topic=("*/forbidden*",))
    async with running(settings, sock) as server:
        sub = AsyncSubscriber(server.topic("forbidden"), Inbox(), hub=server.hub, **FAST)
        try:
            with pytest.raises(SubscriptionError, match="denied|refused"):
                await sub.start()
        finally:
            await sub.stop()


@pytest.mark.postgres
@pytest.mark.redis
async def test_subscriber_across_two_processes(postgres_url: str, redis_url: str) -> None:
    """Two servers on one PostgreSQL and Redis behind one public URL: the subscriber polls one,
    the publisher talks to the other, and the update crosses over."""
    import uuid

    from tests import pgdb

    sep = "&" if "?" in redis_url else "?"
    broker = f"{redis_url}{sep}prefix=reversehub-clients-{uuid.uuid4().hex[:12]}:"
    sock_a, sock_b = bound_socket(), bound_socket()
    port_a = sock_a.getsockname()[1]
    async with pgdb.scratch_database(postgres_url, migrate=True) as database:
        settings = replace(live_settings(database, port_a), redis_url=broker)
        async with (
            serve_live(create_app(settings), sock=sock_a) as url_a,
            serve_live(create_app(replace(settings, port=sock_b.getsockname()[1])), sock=sock_b) as url_b,
        ):
            inbox = Inbox()
            topic = f"{url_a}/topics/scaleout"
            async with AsyncSubscriber(topic, inbox, hub=f"{url_a}/hub", **FAST):
                async with httpx.AsyncClient() as http:
                    r = await http.post(f"{url_b}/publish", params={"hub.topic": topic}, content=b"from b")
                    assert r.status_code < 300
                await wait_for(lambda: inbox.bodies() == [b"from b"])
