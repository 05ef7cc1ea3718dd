"""The Python clients against a real server on a socket: subscribe, verify, deliver, sign, retry,
deduplicate, discover, reconnect after a restart, stop; the relay endpoint; the CLI; the README."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from clients import Subscriber, Update
from reversehub.app import create_app
from reversehub.settings import Settings
from tests.support import bound_socket, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

FAST = {"backoff": (0.02, 0.2), "verify_timeout": 10.0}


@dataclass
class Server:
    url: str
    settings: Settings

    @property
    def hub(self) -> str:
        return f"{self.url}/hub"

    def topic(self, name: str) -> str:
        return f"{self.url}/topics/{name}"


def live_settings(database_url: str, port: int, **overrides: Any) -> Settings:
    return Settings(
        database_url=database_url,
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        migrate=False,
        allow_private_networks=True,
        poll_timeout=1.0,
        unavailable_timeout=2.0,
        reply_timeout=5.0,
        delivery_retry_base=0.05,
        delivery_retry_max=0.2,
        outbox_scan_interval=0.1,
        **overrides,
    )


@asynccontextmanager
async def running(settings: Settings, sock: Any) -> AsyncIterator[Server]:
    async with serve_live(create_app(settings), sock=sock) as url:
        yield Server(url, settings)


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
    async with Subscriber(topic, inbox, hub=server.hub, **FAST) as sub:
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
    sub = Subscriber(topic, first, hub=server.hub, **FAST)
    await sub.start()
    await sub.stop()
    async with Subscriber(topic, second, hub=server.hub, **FAST):
        await publish(server, topic, b"after stop")
        await wait_for(lambda: second.bodies() == [b"after stop"])
    assert first.calls == 0


def sign(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    import hmac

    return f"{algorithm}={hmac.new(secret.encode(), body, algorithm).hexdigest()}"


async def test_verification_only_for_what_was_asked(server: Server) -> None:
    topic = server.topic("verify")
    async with Subscriber(topic, Inbox(), hub=server.hub, **FAST) as sub, httpx.AsyncClient() as http:
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
    async with Subscriber(topic, inbox, hub=server.hub, **FAST) as sub, httpx.AsyncClient() as http:
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
    async with Subscriber(topic, inbox, hub=server.hub, **FAST):
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


async def test_registration_lost_reregisters_and_resubscribes(server: Server) -> None:
    inbox = Inbox()
    states: list[str] = []
    topic = server.topic("lost")
    async with Subscriber(topic, inbox, hub=server.hub, on_state=states.append, **FAST) as sub:
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
        async with Subscriber(topic, inbox, hub=server.hub, lease_seconds=1, on_state=states.append, **FAST) as sub:
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
        sub = Subscriber(topic, inbox, hub=server.hub, on_state=states.append, **FAST)
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


def bound_socket_on(port: int) -> Any:
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock
