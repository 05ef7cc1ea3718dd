"""Durable subscribers and the CLI's signals, over a real ``reversehub serve`` in a process of its own
(issue 14 items 1 and 3; docs/subscribers.md).

A subscriber process is SIGKILLed, updates are published while it is dead, and the same process
started again with the same state file gets them all, in order, once each; gaps the hub forces are
filled from its replay or reported; SIGTERM and SIGHUP end ``subscribe`` and ``expose`` as Ctrl-C does.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from tests.live import test_clients_live as clients_live
from tests.support import free_port, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

REVERSEHUB = str(Path(sys.executable).parent / "reversehub")
RESUME_BOUND = 20.0  # issue 14: everything published while the subscriber was dead, within 20 s

# A subscriber application as a user writes one: one JSON line per update or gap on stdout.
SUBSCRIBER_APP = """
import json, sys, threading
from clients import Subscriber

topic, hub, state = sys.argv[1:4]
lock = threading.Lock()

def out(record):
    with lock:
        print(json.dumps(record), flush=True)

def show(update):
    out({"seq": update.seq, "body": update.text, "id": update.id})

def gap(first, last):
    out({"missed": [first, last]})

sub = Subscriber(topic, show, hub=hub, state=state, on_gap=gap, gap_wait=0.5, backoff=(0.05, 0.5))
sub.start()
print("ready", file=sys.stderr, flush=True)  # updates may come before start() returns
threading.Event().wait()
"""


@dataclass
class Hub:
    url: str
    db: Path

    @property
    def hub(self) -> str:
        return f"{self.url}/hub"

    @property
    def relay(self) -> str:
        return f"{self.url}/reversehttp"

    def topic(self, name: str) -> str:
        return f"{self.url}/topics/{name}"

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db, timeout=10) as db:
            return db.execute(sql, params).fetchall()

    def active_subscriptions(self, topic: str) -> list[str]:
        rows = self.query("SELECT callback FROM hub_subscriptions WHERE topic = ? AND state = 'active'", topic)
        return [r[0] for r in rows]

    def delivered(self, topic: str, seq: int) -> bool:
        """Whether the hub has recorded the subscriber's 2xx for delivery ``seq`` of ``topic``."""
        rows = self.query(
            "SELECT d.state FROM hub_deliveries d JOIN hub_subscriptions s ON s.id = d.subscription_id"
            " WHERE s.topic = ? AND d.seq = ?",
            topic,
            seq,
        )
        return [r[0] for r in rows] == ["delivered"]

    def registered(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM relay_registrations WHERE name = ?", name))


@asynccontextmanager
async def serving(tmp_path: Path, *flags: str) -> AsyncIterator[Hub]:
    """``reversehub serve`` on a free port with an SQLite file of its own, until the test ends."""
    port = free_port()
    db = tmp_path / "hub.db"
    log = (tmp_path / f"serve-{port}.log").open("wb")
    command = [REVERSEHUB, "serve", "--port", str(port), "--database-url", f"sqlite:///{db}"]
    # The server's own timeouts and retries, as a user runs it: what a restart takes is measured.
    command += ["--allow-private-networks", "--log-level", "warning", *flags]
    proc = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:

        async def healthy() -> bool:
            assert proc.returncode is None, (tmp_path / f"serve-{port}.log").read_text(errors="replace")
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{url}/healthz", timeout=1)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(healthy, timeout=60, interval=0.05)
        yield Hub(url, db)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        print((tmp_path / f"serve-{port}.log").read_text(errors="replace")[-3000:])  # shown on failure


class Process(clients_live.Process):
    """A client process whose output lines we await (with a deadline, never a sleep)."""

    @classmethod
    async def app(cls, hub: Hub, topic: str, state: Path) -> Process:
        """The subscriber application above; returns once it is subscribed."""
        process = await cls.spawn([sys.executable, "-c", SUBSCRIBER_APP, topic, hub.hub, str(state)])
        await process.until(lambda line: line == "ready", stream="stderr")
        return cast(Process, process)

    @classmethod
    async def cli(cls, *args: str, ready: str | None = "[subscribed]") -> Process:
        """``reversehub ARGS``; returns once stderr said ``ready``."""
        process = await cls.spawn([REVERSEHUB, *args])
        if ready is not None:
            await process.until(lambda line: line == ready, stream="stderr")
        return cast(Process, process)

    async def record(self, timeout: float = 30) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(await self.line(timeout=timeout))
        return value

    async def rest(self, stream: str) -> str:
        """What is left on ``stream`` once the process has ended."""
        reader = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert reader is not None and self.proc.returncode is not None
        return (await reader.read()).decode(errors="replace")

    async def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def stop(self) -> None:
        """SIGKILL (no goodbye to the relay or the hub), and reap it."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def publish(hub: Hub, topic: str, body: str) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{hub.url}/publish", params={"hub.topic": topic}, content=body, headers={"content-type": "text/plain"}
        )
    assert r.status_code < 300, r.text


def last_seq(state: Path) -> int:
    return int(json.loads(state.read_text())["last_seq"])


def body_of(record: dict[str, Any]) -> str:
    return str(record["body"])


async def start_subscriber(kind: str, hub: Hub, topic: str, state: Path) -> Process:
    if kind == "python":
        return await Process.app(hub, topic, state)
    return await Process.cli("subscribe", topic, "--hub", hub.hub, "--state", str(state), "--json")


# -- a subscriber killed and started again --------------------------------------------------------


@pytest.mark.parametrize("kind", ["python", "cli"])
async def test_a_killed_subscriber_gets_what_was_published_while_it_was_dead(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("durable")
        first = await start_subscriber(kind, hub, topic, state)
        try:
            await publish(hub, topic, "update 0")
            assert (await first.record()) | {"id": None} == {"seq": 1, "body": "update 0", "id": None} | (
                {"topic": topic, "content_type": "text/plain"} if kind == "cli" else {}
            )
            await wait_for(lambda: last_seq(state) == 1)  # written once the callback returned
            assert oct(state.stat().st_mode & 0o777) == "0o600"
        finally:
            await first.stop()
        for n in range(1, 11):
            await publish(hub, topic, f"update {n}")

        started = time.monotonic()
        again = await start_subscriber(kind, hub, topic, state)
        try:
            records = [await again.record(timeout=RESUME_BOUND) for _ in range(10)]
            elapsed = time.monotonic() - started
            assert [(r["seq"], body_of(r)) for r in records] == [(n + 1, f"update {n}") for n in range(1, 11)]
            print(f"{kind}: the ten updates published while dead arrived {elapsed:.1f}s after the restart")
            assert elapsed < RESUME_BOUND, f"took {elapsed:.1f}s"
            # A later publish arrives once: the next line after it is the one after it.
            await publish(hub, topic, "update 11")
            await publish(hub, topic, "update 12")
            assert [body_of(await again.record()) for _ in range(2)] == ["update 11", "update 12"]
            assert len(hub.active_subscriptions(topic)) == 1  # the same subscription, renewed
            await wait_for(lambda: last_seq(state) == 13)
        finally:
            await again.stop()


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_a_signal_ends_subscribe_as_ctrl_c_does(tmp_path: Path, sig: int) -> None:
    async with serving(tmp_path) as hub:
        topic = hub.topic("signals")
        sub = await Process.cli("subscribe", topic, "--hub", hub.hub)
        try:
            await wait_for(lambda: len(hub.active_subscriptions(topic)) == 1)  # stored just after the echo
            (callback,) = hub.active_subscriptions(topic)
            name = callback.split("/relay/")[1].split("/")[0]
            assert hub.registered(name)
            assert await sub.signal(sig) == 0
            assert "[stopped]" in await sub.rest("stderr")
            # Without --state nothing is left behind: no subscription (ended just after the echo), no name.
            assert not hub.registered(name)
            await wait_for(lambda: hub.active_subscriptions(topic) == [])
        finally:
            await sub.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_a_signal_detaches_subscribe_with_state(tmp_path: Path, sig: int) -> None:
    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("detach")
        sub = await Process.cli("subscribe", topic, "--hub", hub.hub, "--state", str(state), "--json")
        try:
            await publish(hub, topic, "before")
            assert body_of(await sub.record()) == "before"
            await wait_for(lambda: last_seq(state) == 1)
            assert await sub.signal(sig) == 0
        finally:
            await sub.stop()
        saved = json.loads(state.read_text())
        assert hub.registered(saved["name"]) and hub.active_subscriptions(topic) == [saved["callback"]]
        await publish(hub, topic, "while away")
        again = await Process.cli("subscribe", topic, "--hub", hub.hub, "--state", str(state), "--json")
        try:  # the same name, re-claimed with its token: no "token mismatch"
            assert (await again.record(timeout=RESUME_BOUND))["seq"] == 2
            assert json.loads(state.read_text())["name"] == saved["name"]
        finally:
            await again.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_a_signal_ends_expose_and_releases_the_name(tmp_path: Path, sig: int) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("local")

    local_app = Starlette(routes=[Route("/{path:path}", hello)])
    async with serving(tmp_path) as hub, serve_live(local_app) as local:
        args = ("expose", "webapp", "--to", local, "--relay", hub.relay)
        for _ in range(2):  # started again at once with the same name: no "token mismatch"
            proc = await Process.cli(*args, ready=None)
            try:
                assert await proc.line() == f"{hub.url}/relay/webapp/ -> {local}"
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"{hub.url}/relay/webapp/")).text == "local"
                assert await proc.signal(sig) == 0
                assert not hub.registered("webapp")
            finally:
                await proc.stop()


# -- gaps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["python", "cli"])
async def test_an_older_state_is_filled_from_the_replay(tmp_path: Path, kind: str) -> None:
    """The state file says 1 was the last handled, the hub delivered 1..3: 2 and 3 come again from
    its replay, in order, before what is published next."""
    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("older")
        sub = await start_subscriber(kind, hub, topic, state)
        try:
            await publish(hub, topic, "saved")
            assert body_of(await sub.record()) == "saved"
            await wait_for(lambda: last_seq(state) == 1)
            older = state.read_bytes()
            for n in (2, 3):
                await publish(hub, topic, f"update {n}")
                assert (await sub.record())["seq"] == n
            await wait_for(lambda: last_seq(state) == 3)
        finally:
            await sub.stop()
        state.write_bytes(older)
        again = await start_subscriber(kind, hub, topic, state)
        try:
            await publish(hub, topic, "update 4")
            records = [await again.record(timeout=RESUME_BOUND) for _ in range(3)]
            assert [(r["seq"], body_of(r)) for r in records] == [(2, "update 2"), (3, "update 3"), (4, "update 4")]
        finally:
            await again.stop()


@pytest.mark.parametrize("kind", ["python", "cli"])
async def test_what_the_hub_did_not_keep_is_reported(tmp_path: Path, kind: str) -> None:
    """With one delivery pending at most, the hub skips what is published next while the
    subscriber is dead: the pending one arrives, the skipped ones are reported, nothing is silent."""
    state = tmp_path / "sub.state"
    async with serving(tmp_path, "--max-pending-per-subscription", "1") as hub:
        topic = hub.topic("skipped")
        sub = await start_subscriber(kind, hub, topic, state)
        try:
            await publish(hub, topic, "update 1")
            assert (await sub.record())["seq"] == 1
            # Acknowledged, not just handled: while 1 is pending, the hub would skip 2 as well.
            await wait_for(lambda: hub.delivered(topic, 1))
        finally:
            await sub.stop()
        for n in range(2, 7):
            await publish(hub, topic, f"update {n}")  # 2 is queued, 3..6 skipped
        again = await start_subscriber(kind, hub, topic, state)
        try:
            r = await again.record(timeout=RESUME_BOUND)
            assert (r.get("seq"), r.get("body")) == (2, "update 2"), r
            missed = await again.record(timeout=RESUME_BOUND)
            assert missed["missed"] == [3, 6]
            if kind == "cli":
                assert missed["topic"] == topic
                assert "missed updates 3..6" in "\n".join(await again.until(lambda line: "missed" in line, "stderr"))
            await publish(hub, topic, "update 7")
            assert [(r := await again.record())["seq"], body_of(r)] == [7, "update 7"]
            await wait_for(lambda: last_seq(state) == 7)
        finally:
            await again.stop()


# -- stop(), unsubscribe(), and a hub that forgot ---------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.seqs: list[int | None] = []
        self.gaps: list[tuple[int, int | None]] = []

    async def __call__(self, update: Any) -> None:
        self.seqs.append(update.seq)

    def gap(self, first: int, last: int | None) -> None:
        self.gaps.append((first, last))


FAST: dict[str, Any] = {"backoff": (0.05, 0.5), "gap_wait": 0.5}


async def test_stop_detaches_and_unsubscribe_ends(tmp_path: Path) -> None:
    from clients import AsyncSubscriber

    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("lifecycle")
        inbox = Inbox()
        sub = await AsyncSubscriber(topic, inbox, hub=hub.hub, state=state, **FAST).start()
        saved = json.loads(state.read_text())
        await sub.stop()  # detach: the name, the subscription and the file stay
        assert state.exists() and hub.registered(saved["name"])
        await wait_for(lambda: hub.active_subscriptions(topic) == [saved["callback"]])  # stored after the echo

        again = await AsyncSubscriber(topic, inbox, hub=hub.hub, state=state, **FAST).start()
        await again.unsubscribe()  # the end: nothing is left behind
        assert not state.exists() and not hub.registered(saved["name"])
        await wait_for(lambda: hub.active_subscriptions(topic) == [])  # ended just after the echo


async def test_a_hub_that_forgot_the_subscription_is_reported_and_numbering_starts_again(tmp_path: Path) -> None:
    from clients import AsyncSubscriber

    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("forgotten")
        inbox = Inbox()
        async with AsyncSubscriber(topic, inbox, hub=hub.hub, state=state, **FAST):
            for n in range(3):
                await publish(hub, topic, f"update {n}")
            await wait_for(lambda: last_seq(state) == 3)
        hub.query("DELETE FROM hub_subscriptions WHERE topic = ?", topic)  # e.g. an admin deleted it
        async with AsyncSubscriber(topic, inbox, hub=hub.hub, state=state, on_gap=inbox.gap, **FAST) as sub:
            assert inbox.gaps == [(4, None)] and [str(m) for m in sub.missed] == [
                "missed updates from 4 on (how many is unknown): the hub no longer knows this subscription"
            ]
            await publish(hub, topic, "anew")
            await wait_for(lambda: inbox.seqs == [1, 2, 3, 1])  # a new subscription, numbered from 1
            await sub.stop()
        assert len(hub.active_subscriptions(topic)) == 1 and last_seq(state) == 1


async def test_a_lease_that_ran_out_while_away_is_reported(tmp_path: Path) -> None:
    """While a subscription is not active the hub numbers nothing: what was published then cannot be
    counted, so it is reported with no end (and never passed over in silence)."""
    from clients import AsyncSubscriber

    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("lapsed")
        inbox = Inbox()
        async with AsyncSubscriber(topic, inbox, hub=hub.hub, state=state, **FAST):
            await publish(hub, topic, "update 1")
            await wait_for(lambda: last_seq(state) == 1)
        hub.query("UPDATE hub_subscriptions SET expires_at = ? WHERE topic = ?", time.time() - 1, topic)
        async with AsyncSubscriber(topic, inbox, hub=hub.hub, state=state, on_gap=inbox.gap, **FAST) as sub:
            assert inbox.gaps == [(2, None)] and "lease ran out" in str(sub.missed[0])
            await publish(hub, topic, "update 2")
            await wait_for(lambda: inbox.seqs == [1, 2])  # the same subscription, renewed
            await sub.stop()


async def test_a_discovered_topic_resumes_from_the_url_it_was_discovered_from(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from clients import AsyncSubscriber

    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        canonical = hub.topic("canonical")

        async def page(request: Any) -> Response:
            return Response("", headers={"link": f'<{hub.hub}>; rel="hub", <{canonical}>; rel="self"'})

        async with serve_live(Starlette(routes=[Route("/page", page)])) as site:
            inbox = Inbox()
            async with AsyncSubscriber(f"{site}/page", inbox, state=state, **FAST) as sub:
                assert sub.topic == canonical
                await publish(hub, canonical, "update 1")
                await wait_for(lambda: last_seq(state) == 1)
            await publish(hub, canonical, "update 2")
            async with AsyncSubscriber(f"{site}/page", inbox, state=state, **FAST):
                await wait_for(lambda: inbox.seqs == [1, 2])
        assert len(hub.active_subscriptions(canonical)) == 1


async def test_cli_unsubscribe_ends_a_kept_subscription(tmp_path: Path) -> None:
    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("ending")
        sub = await Process.cli("subscribe", topic, "--hub", hub.hub, "--state", str(state))
        assert await sub.signal(signal.SIGTERM) == 0
        saved = json.loads(state.read_text())
        args = ("subscribe", topic, "--hub", hub.hub, "--state", str(state), "--unsubscribe")
        end = await Process.cli(*args, ready=None)
        assert await asyncio.wait_for(end.proc.wait(), 30) == 0, await end.rest("stderr")
        assert not state.exists() and not hub.registered(saved["name"])
        await wait_for(lambda: hub.active_subscriptions(topic) == [])
