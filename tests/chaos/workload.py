"""The workload of a chaos test: subscriptions (direct and behind the relay), a fan-out, and a
prober that keeps asking while a fault lasts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx

from relay.wire import HttpResponse, parse_request, serialize_response
from tests.chaos.figures import Receiver, Tally, _Phased
from tests.chaos.processes import Serve
from tests.relay.helpers import links
from tests.support import wait_for


async def subscribe(client: httpx.AsyncClient, base: str, topic: str, callback: str, tally: Tally) -> int | str:
    form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
    return await _send(client, "subscribe", tally, "POST", base + "/hub", data=form)


async def publish(client: httpx.AsyncClient, base: str, topic: str, body: bytes, tally: Tally) -> bool:
    """A fat ping; True if the hub answered 2xx (from then on it must reach every subscriber)."""
    status = await _send(
        client,
        "publish",
        tally,
        "POST",
        base + "/publish",
        params={"hub.topic": topic},
        content=body,
        headers={"content-type": "text/plain"},
    )
    return isinstance(status, int) and 200 <= status < 300


async def _send(client: httpx.AsyncClient, kind: str, tally: Tally, method: str, url: str, **kw: object) -> int | str:
    try:
        status: int | str = (await client.request(method, url, **kw)).status_code  # type: ignore[arg-type]
    except httpx.TimeoutException:
        status = "unanswered"
    except httpx.TransportError as exc:
        status = type(exc).__name__  # a dead process: refused or reset
    tally.add(kind, status)
    return status


async def active_subscriptions(database_url: str, topic: str) -> int:
    from sqlalchemy import text

    from reversehub.core import db

    engine = db.create_engine(database_url)
    try:
        async with engine.connect() as conn:
            query = text("select count(*) from hub_subscriptions where state = 'active' and topic = :t")
            return int((await conn.execute(query, {"t": topic})).scalar() or 0)
    finally:
        await engine.dispose()


async def subscribe_all(
    client: httpx.AsyncClient,
    procs: list[Serve],
    receiver: Receiver,
    database_url: str,
    topic: str,
    callbacks: dict[str, str],
) -> list[str]:
    """Subscribe each callback (receiver key -> URL) to ``topic``, spread over ``procs``; returns
    once all are verified and stored."""
    tally = Tally()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i, url in enumerate(callbacks.values()):
                tg.start_soon(subscribe, client, procs[i % len(procs)].base, topic, url, tally)
    assert tally.counts["subscribe"] == {"202": len(callbacks)}, tally
    await wait_for(lambda: receiver.verified.issuperset(callbacks), timeout=60, interval=0.05)

    async def stored() -> bool:
        return await active_subscriptions(database_url, topic) == len(callbacks)

    await wait_for(stored, timeout=30, interval=0.2)
    return list(callbacks)


SUBSCRIBERS, UPDATES = 100, 20  # the fan-out: 2,000 deliveries


async def fan_out(
    client: httpx.AsyncClient,
    procs: list[Serve],
    receiver: Receiver,
    cb_base: str,
    database_url: str,
    topic: str,
    on_relay: dict[str, str] | None = None,
) -> tuple[list[str], list[bytes], Tally]:
    """Subscribe ``SUBSCRIBERS`` callbacks (and those ``on_relay``, key -> public URL), publish
    ``UPDATES`` (one process after another) and return once a fifth of the deliveries arrived, mid
    fan-out: the receiver keys, the publishes accepted, the tally."""
    callbacks = {f"cb/{i}": f"{cb_base}/cb/{i}" for i in range(SUBSCRIBERS)} | (on_relay or {})
    keys = await subscribe_all(client, procs, receiver, database_url, topic, callbacks)
    tally = Tally()
    accepted = []
    for n in range(UPDATES):
        body = f"update {n}".encode()
        if await publish(client, procs[n % len(procs)].base, topic, body, tally):
            accepted.append(body)
    assert len(accepted) == UPDATES, tally
    await wait_for(lambda: receiver.count() >= len(keys) * UPDATES // 5, timeout=60, interval=0.01)
    return keys, accepted, tally


def mid_fan_out(receiver: Receiver) -> int:
    """Deliveries so far, asserting the fault landed mid fan-out."""
    count = receiver.count()
    assert count < SUBSCRIBERS * UPDATES, "the fan-out ended before the fault: slow the receiver down"
    return count


class RelaySubscriber:
    """A subscriber behind the relay, as ``Subscriber`` is: the name ``name`` polled on whichever
    process is alive; its challenges are echoed and its deliveries recorded in ``receiver`` under
    the key ``relay/NAME``."""

    def __init__(self, client: httpx.AsyncClient, procs: list[Serve], receiver: Receiver, name: str) -> None:
        self.client, self.procs, self.receiver = client, procs, receiver
        self.key = f"relay/{name}"
        self.name = name
        self.first = ""
        self.public = ""

    async def register(self) -> None:
        r = await self.client.post(self.procs[0].base + "/reversehttp", data={"name": self.name, "token": "t"})
        assert r.status_code in (201, 204), r.text
        found = links(r)
        self.first, self.public = path_of(found["first"]), found["related"]

    async def run(self) -> None:
        path, turn = self.first, 0
        while True:
            live = [p for p in self.procs if p.alive()]
            base = live[turn % len(live)].base
            try:
                r = await self.client.get(base + path, timeout=60)
            except httpx.TransportError:
                turn += 1  # that process is gone: poll another
                await anyio.sleep(0.2)  # pacing the retry
                continue
            if r.status_code != 200:
                if r.status_code == 404:
                    path = self.first  # the next-URL was lost with the broker: start again
                if r.status_code != 204:
                    await anyio.sleep(0.2)  # pacing the retry (503 while the broker is away)
                continue
            request = parse_request(r.content)
            if request.method == "GET":
                self.receiver.verified.add(self.key)
                reply = HttpResponse(200, [], httpx.URL(request.target).params.get("hub.challenge", "").encode())
            else:
                webhook_id, seq = request.header("webhook-id") or "", request.header("x-hub-sequence") or "-1"
                self.receiver.record(self.key, webhook_id, int(seq), request.body, 0)
                reply = HttpResponse(204)
            try:
                await self.client.post(
                    base + path, content=serialize_response(reply), headers={"content-type": "message/http"}
                )
            except httpx.TransportError:
                pass  # the hub retries what it got no answer for
            path = path_of(links(r).get("next", self.first))


def path_of(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


class Prober:
    """Requests made all through a fault, one process after another: publishes to the fan-out's topic
    (those answered 2xx join ``accepted``), subscriptions to ``side_topic``, ``/readyz``. Each outcome is
    tallied under the kind of request and the ``phase`` the test is in."""

    def __init__(self, client: httpx.AsyncClient, procs: list[Serve], topic: str, cb_base: str) -> None:
        self.client = client
        self.procs = procs
        self.topic = topic
        self.side_topic = topic + "/side"
        self.cb_base = cb_base
        self.tally = Tally()
        self.phase = "before"
        self.accepted: list[bytes] = []
        self.subscribed: list[str] = []  # receiver keys of the side subscriptions answered 202

    async def run(self, until: anyio.Event, subscribe_too: bool = False) -> None:
        """Probe until ``until``; after the fault only until each process took one publish again, so
        that the probes add little to the fan-out they are watching."""
        k = 0
        resumed: set[str] = set()
        while not until.is_set() and not (resumed and resumed >= {p.base for p in self.procs if p.alive()}):
            proc = self.procs[k % len(self.procs)]
            if proc.alive():
                phase = self.phase
                body = f"probe {k}".encode()
                if await publish(self.client, proc.base, self.topic, body, self._tally(phase)):
                    self.accepted.append(body)
                    if phase == "after":
                        resumed.add(proc.base)
                if subscribe_too:
                    key = f"probe/{k}"
                    status = await subscribe(
                        self.client, proc.base, self.side_topic, f"{self.cb_base}/{key}", self._tally(phase)
                    )
                    if status == 202:
                        self.subscribed.append(key)
                await _send(self.client, "readyz", self._tally(phase), "GET", proc.base + "/readyz")
            k += 1
            await anyio.sleep(0.2)  # pacing: a few requests a second, not a load test

    def _tally(self, phase: str) -> Tally:
        return _Phased(self.tally, phase)


@asynccontextmanager
async def probing(
    client: httpx.AsyncClient, procs: list[Serve], topic: str, cb_base: str, subscribe_too: bool = False
) -> AsyncIterator[Prober]:
    """A :class:`Prober` running for the duration of the block (and until each process took a
    publish after the fault, if that comes later); set its ``phase`` as the fault goes."""
    prober = Prober(client, procs, topic, cb_base)
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(prober.run, done, subscribe_too)
        try:
            yield prober
        finally:
            done.set()
