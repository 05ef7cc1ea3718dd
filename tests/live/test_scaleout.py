"""Scale-out with real ``reversehub serve`` processes on PostgreSQL and Redis.

Every process here gets the same ``--public-url`` (the first one's address), as it would behind one
load balancer: relay URLs handed out by one process are valid on all of them, and each process serves
deliveries to those URLs in-process. Test clients stand in for the load balancer by sending a
capability URL's *path* to whichever process they like.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from relay.wire import HttpRequest, HttpResponse, parse_request, serialize_response
from tests import pgdb
from tests.relay.helpers import links
from tests.support import free_port, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.postgres, pytest.mark.redis]

REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))
# Topics are made up (example.com): no DNS in a sandbox, so the SSRF guard must let them be.
FAST = [
    "--unavailable-timeout",
    "3",
    "--reply-timeout",
    "3",
    "--delivery-claim-seconds",
    "3",
    "--allow-private-networks",
]


@dataclass
class Proc:
    """One ``reversehub serve`` process."""

    popen: subprocess.Popen[bytes]
    base: str
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM (a supervisor drains its workers; SIGKILL would leave them to notice alone), then
        SIGKILL after 20 s; prints its log, which pytest shows when the test failed."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        self.popen.wait(10)
        print(f"--- {self.base} exited {self.popen.returncode}:\n{self.output()}")


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    async with pgdb.scratch_database(postgres_url, migrate=True) as url:
        yield url


@pytest.fixture
def broker_url(redis_url: str) -> str:
    sep = "&" if "?" in redis_url else "?"
    return f"{redis_url}{sep}prefix=reversehub-live-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def launch(tmp_path: Path, database: str) -> Iterator[Callable[..., Proc]]:
    """``launch(*flags, port=None)`` starts ``reversehub serve`` (not waited for: see :func:`started`).

    Depends on ``database`` so that the processes are gone before their database is dropped.
    """
    procs: list[Proc] = []

    def start(*flags: str, port: int | None = None) -> Proc:
        port = port or free_port()
        log = Path(tempfile.mkstemp(dir=tmp_path, suffix=".log")[1])
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [REVERSEHUB, "serve", "--port", str(port), "--log-level", "warning", *flags],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        procs.append(Proc(popen, f"http://127.0.0.1:{port}", log))
        return procs[-1]

    yield start
    for proc in procs:
        proc.stop()


async def started(client: httpx.AsyncClient, *procs: Proc) -> None:
    async def ready(proc: Proc) -> bool:
        assert proc.alive(), proc.output()
        try:
            return (await client.get(proc.base + "/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    for proc in procs:
        await wait_for(lambda proc=proc: ready(proc), timeout=30, interval=0.05)


async def metric(client: httpx.AsyncClient, base: str, name: str) -> float:
    text = (await client.get(base + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def path_of(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


async def register(client: httpx.AsyncClient, base: str, name: str) -> dict[str, str]:
    r = await client.post(base + "/reversehttp", data={"name": name, "token": "t"})
    assert r.status_code in (201, 204), r.text
    return links(r)


async def subscribe(client: httpx.AsyncClient, base: str, topic: str, callback: str) -> None:
    form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
    r = await client.post(base + "/hub", data=form)
    assert r.status_code == 202, r.text


async def publish(client: httpx.AsyncClient, base: str, topic: str, body: str) -> None:
    """A fat ping: distribute ``body`` as it is."""
    r = await client.post(
        base + "/publish", params={"hub.topic": topic}, content=body, headers={"content-type": "text/plain"}
    )
    assert r.status_code in (202, 204), r.text


Handler = Callable[[HttpRequest], tuple[int, bytes]]


@dataclass
class Poller:
    """An application on the relay: polls its request URL on whichever process is alive, answers."""

    client: httpx.AsyncClient
    procs: list[Proc]
    path: str
    handle: Handler
    answered: int = 0
    switches: int = 0
    _turn: int = field(default=0)

    async def run(self) -> None:
        path = self.path
        while True:
            live = [p for p in self.procs if p.alive()]
            base = live[self._turn % len(live)].base
            try:
                r = await self.client.get(base + path)
                if r.status_code != 200:
                    assert r.status_code in (204, 503), r.text  # 503: that process is draining
                    continue
                status, body = self.handle(parse_request(r.content))
                reply = HttpResponse(status, [("Content-Type", "text/plain")], body, "OK")
                await self.client.post(
                    base + path, content=serialize_response(reply), headers={"content-type": "message/http"}
                )
                self.answered += 1
                path = path_of(links(r).get("next", path))
            except httpx.TransportError:
                self._turn += 1  # that process is gone: poll another; the broker kept our requests
                self.switches += 1


def websub_handler(received: list[bytes]) -> Handler:
    """Answer intent verification with the challenge, and record every content distribution."""

    def handle(request: HttpRequest) -> tuple[int, bytes]:
        if request.method == "GET":
            query = httpx.URL(request.target).params
            return 200, query.get("hub.challenge", "").encode()
        received.append(request.body)
        return 200, b"thanks"

    return handle


async def active_subscriptions(database: str) -> int:
    from sqlalchemy import text

    from reversehub.core import db

    engine = db.create_engine(database, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(text("select count(*) from hub_subscriptions where state = 'active'"))).scalar()
            )
    finally:
        await engine.dispose()


# Graceful shutdown ----------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_ends_held_polls_with_204_and_exits_zero(
    launch: Callable[..., Proc], database: str, broker_url: str, workers: int
) -> None:
    proc = launch(
        "--database-url", database, "--redis-url", broker_url, "--poll-timeout", "60", "--workers", str(workers)
    )
    async with httpx.AsyncClient(timeout=30) as client:
        await started(client, proc)
        first = path_of((await register(client, proc.base, "alice"))["first"])
        results: list[tuple[int, float]] = []

        async def poll() -> None:
            t0 = time.monotonic()
            r = await client.get(proc.base + first)
            results.append((r.status_code, time.monotonic() - t0))

        # One worker: its metric counts every held poll. Two: /metrics (on a fresh connection each
        # time) answers from either worker, so hold one poll and wait until some worker shows it.
        polls = 3 if workers == 1 else 1

        async def held() -> float:
            async with httpx.AsyncClient() as fresh:
                return await metric(fresh, proc.base, "relay_pollers_waiting")

        async with anyio.create_task_group() as tg:
            for _ in range(polls):
                tg.start_soon(poll)
            await wait_for(lambda: _equals(held(), polls), timeout=10)
            t0 = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(20) == 0, proc.output()
    assert [status for status, _ in results] == [204] * polls
    assert time.monotonic() - t0 < 10  # far below --poll-timeout 60: the polls were ended, not waited out


# Relay across processes -----------------------------------------------------------------------
async def test_poller_on_one_process_requesters_on_another(
    launch: Callable[..., Proc], database: str, broker_url: str
) -> None:
    a = launch("--database-url", database, "--redis-url", broker_url, *FAST)
    b = launch("--database-url", database, "--redis-url", broker_url, "--public-url", a.base, *FAST)
    async with httpx.AsyncClient(timeout=30) as client, anyio.create_task_group() as tg:
        await started(client, a, b)
        urls = await register(client, a.base, "alice")
        seen: list[str] = []

        def echo(request: HttpRequest) -> tuple[int, bytes]:
            seen.append(request.target)
            return 200, b"echo " + request.target.encode()

        tg.start_soon(Poller(client, [a], path_of(urls["first"]), echo).run)
        public = path_of(urls["related"])
        for i in range(20):  # one after another, then a burst
            r = await client.get(f"{b.base}{public}seq/{i}")
            assert (r.status_code, r.text) == (200, f"echo {public}seq/{i}")

        async def call(i: int) -> None:
            r = await client.get(f"{b.base}{public}burst/{i}")
            assert (r.status_code, r.text) == (200, f"echo {public}burst/{i}")

        async with anyio.create_task_group() as burst:
            for i in range(30):
                burst.start_soon(call, i)
        assert len(seen) == 50
        tg.cancel_scope.cancel()


async def test_subscribe_on_one_process_publish_on_another(
    launch: Callable[..., Proc], database: str, broker_url: str
) -> None:
    a = launch("--database-url", database, "--redis-url", broker_url, *FAST)
    b = launch("--database-url", database, "--redis-url", broker_url, "--public-url", a.base, *FAST)
    received: list[bytes] = []
    async with httpx.AsyncClient(timeout=30) as client, anyio.create_task_group() as tg:
        await started(client, a, b)
        urls = await register(client, a.base, "bob")
        tg.start_soon(Poller(client, [a], path_of(urls["first"]), websub_handler(received)).run)
        topic = "https://example.com/feed"
        await subscribe(client, a.base, topic, urls["related"])
        await wait_for(lambda: _equals(active_subscriptions(database), 1), timeout=15)
        for i in range(5):
            await publish(client, b.base, topic, f"update {i}")
        await wait_for(lambda: len(received) >= 5, timeout=20)
        assert received == [f"update {i}".encode() for i in range(5)]  # in order, each once
        tg.cancel_scope.cancel()


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


# Crash safety ---------------------------------------------------------------------------------
async def test_sigkill_mid_fanout_loses_no_update(launch: Callable[..., Proc], database: str, broker_url: str) -> None:
    """Three processes, 20 subscribers on the relay, 25 updates; one process is SIGKILLed mid fan-out."""
    subscribers, updates = 20, 25
    a = launch("--database-url", database, "--redis-url", broker_url, *FAST)
    others = [
        launch("--database-url", database, "--redis-url", broker_url, "--public-url", a.base, *FAST) for _ in range(2)
    ]
    procs = [a, *others]
    received: dict[int, list[bytes]] = {i: [] for i in range(subscribers)}
    topic = "https://example.com/crash"
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        await started(client, *procs)
        async with anyio.create_task_group() as tg:
            pollers = []
            for i in range(subscribers):
                urls = await register(client, a.base, f"sub{i}")
                poller = Poller(client, procs, path_of(urls["first"]), websub_handler(received[i]), _turn=i)
                pollers.append(poller)
                tg.start_soon(poller.run)
                await subscribe(client, procs[i % 3].base, topic, urls["related"])
            await wait_for(lambda: _equals(active_subscriptions(database), subscribers), timeout=30)

            victim = others[1]
            for n in range(updates):
                await publish(client, others[0].base, topic, f"u{n}")
            # Mid fan-out: some updates are through, most are not.
            await wait_for(lambda: sum(map(len, received.values())) >= subscribers * updates // 5, timeout=30)
            victim.popen.send_signal(signal.SIGKILL)
            at_kill = sum(map(len, received.values()))
            victim.popen.wait(10)

            expected = {f"u{n}".encode() for n in range(updates)}
            await wait_for(lambda: all(set(got) >= expected for got in received.values()), timeout=90)
            tg.cancel_scope.cancel()
    total = sum(map(len, received.values()))
    duplicates = total - subscribers * updates
    print(f"\nfan-out {subscribers}x{updates}: SIGKILL after {at_kill} deliveries; losses 0, duplicates {duplicates}")
    assert at_kill < subscribers * updates  # it really was mid fan-out
    for got in received.values():
        assert set(got) == expected  # at least once each; duplicates are allowed and counted above


# Outbox sharing -------------------------------------------------------------------------------
async def test_outbox_workers_share_the_work_without_double_sending(
    launch: Callable[..., Proc], database: str, broker_url: str
) -> None:
    """Two processes' outbox workers on one PostgreSQL outbox, slow subscribers (0.2 s an answer):
    every delivery arrives exactly once.

    How the work splits is a race: whoever asks first claims every due row (and holds the ones over
    a host's backlog in memory), so on a loaded machine one process may do it all; the split is
    printed, not asserted. test_outbox_work_overflowing_one_process_goes_to_the_other shows,
    deterministically, that the other process takes what one cannot hold.
    """
    subscribers, updates = 150, 2
    hits: Counter[str] = Counter()

    async def callback(request: Request) -> Response:
        if request.method == "GET":
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        await anyio.sleep(0.2)  # a slow subscriber, not a wait of the test
        body = await request.body()
        hits[f"{request.path_params['n']}:{body.decode()}"] += 1
        return Response(status_code=204)

    app = Starlette(routes=[Route("/cb/{n}", callback, methods=["GET", "POST"])])
    async with AsyncExitStack() as stack:
        cb_base = await stack.enter_async_context(serve_live(app))
        flags = ["--database-url", database, "--redis-url", broker_url, *FAST]
        a, b = launch(*flags), launch(*flags)
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        await started(client, a, b)
        topic = "https://example.com/outbox"
        for n in range(subscribers):
            await subscribe(client, (a, b)[n % 2].base, topic, f"{cb_base}/cb/{n}")
        await wait_for(lambda: _equals(active_subscriptions(database), subscribers), timeout=30)
        for u in range(updates):
            await publish(client, (a, b)[u % 2].base, topic, f"u{u}")
        await wait_for(lambda: len(hits) == subscribers * updates, timeout=60)

        async def sent() -> list[float]:
            return [await metric(client, p.base, 'hub_deliveries_total{outcome="delivered"}') for p in (a, b)]

        # The metric follows the callback's answer: wait for it (each delivery counted once, by one process).
        await wait_for(lambda: _equals(_sum(sent()), subscribers * updates), timeout=10)
        per_process = await sent()
    assert max(hits.values()) == 1, [k for k, v in hits.items() if v > 1]
    print(f"\noutbox: {subscribers * updates} deliveries, sent per process {per_process}")


async def _sum(values: object) -> float:
    return sum(await values)  # type: ignore[misc]


async def test_outbox_work_overflowing_one_process_goes_to_the_other(database: str, broker_url: str) -> None:
    """Two apps (two processes' worth: own engine, broker connection and outbox) on one PostgreSQL
    outbox, each sending one delivery at a time and claiming at most 64 rows (``delivery_concurrency=1``,
    so max_inflight is 64). The callback holds every request until two are in flight at once,
    which only two senders can do; then every delivery arrives exactly once, some from each."""
    from reversehub.core.settings import Settings
    from reversehub.server.app import create_app
    from tests.conftest import started as running

    subscribers, updates = 80, 3  # 80 due rows at once: more than one process may hold
    hits: Counter[str] = Counter()
    in_flight = 0
    both = anyio.Event()

    async def callback(request: Request) -> Response:
        nonlocal in_flight
        if request.method == "GET":
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        body = await request.body()
        in_flight += 1
        if in_flight >= 2:
            both.set()
        try:
            await both.wait()
        finally:
            in_flight -= 1
        hits[f"{request.path_params['n']}:{body.decode()}"] += 1
        return Response(status_code=204)

    settings = Settings(
        database_url=database,
        redis_url=broker_url,
        public_url="http://hub.test",  # one public URL for both, as behind a load balancer
        migrate=False,
        allow_private_networks=True,
        delivery_concurrency=1,
        delivery_timeout=60.0,
        outbox_scan_interval=0.1,
    )
    callback_app = Starlette(routes=[Route("/cb/{n}", callback, methods=["GET", "POST"])])
    local = ("127.0.0.1", 4711)  # trusted: may publish fat pings
    async with AsyncExitStack() as stack:
        cb_base = await stack.enter_async_context(serve_live(callback_app))
        apps = [create_app(settings) for _ in range(2)]
        a, b = [await stack.enter_async_context(running(app, local)) for app in apps]
        topic = "https://example.com/overflow"
        for n in range(subscribers):
            await subscribe(a, "", topic, f"{cb_base}/cb/{n}")
        await wait_for(lambda: _equals(active_subscriptions(database), subscribers), timeout=30)
        for u in range(updates):
            await publish(b, "", topic, f"u{u}")
        await wait_for(both.is_set, timeout=30)
        await wait_for(lambda: len(hits) == subscribers * updates, timeout=60)

        def sent() -> list[float]:
            return [app.state.hub.metrics.deliveries.labels("delivered")._value.get() for app in apps]

        await wait_for(lambda: sum(sent()) == subscribers * updates, timeout=10)  # counted after the answer
        per_process = sent()
    assert max(hits.values()) == 1, [k for k, v in hits.items() if v > 1]
    assert all(s > 0 for s in per_process), per_process
    print(f"\noutbox overflow: {subscribers * updates} deliveries, sent per process {per_process}")


async def test_a_never_answering_host_is_skipped_by_the_claim_and_starves_no_one(
    database: str, broker_url: str
) -> None:
    """Two apps (two processes' worth, as above) on one PostgreSQL outbox and Redis; one publish to
    the subscribers of a callback host that never answers (subscribed first, so its rows are the
    oldest) and of one that answers. Each process holds no more of the silent host's rows than one
    claim's room: once that host is saturated here, the claim skips it in SQL, and the rest of its
    rows stay in the table. Both processes deliver to the host that answers, and all its deliveries
    arrive in bounded time. (Claiming everything that fits in max_inflight, a process took every row
    of the silent host and held them, out of every other process's reach.)"""
    from sqlalchemy import text

    from reversehub.core import db
    from reversehub.core.settings import Settings
    from reversehub.server.app import create_app
    from tests.conftest import started as running

    silent_subscribers, good_subscribers = 40, 40
    release = anyio.Event()
    good: Counter[str] = Counter()

    def callback_app(answer: bool) -> Starlette:
        async def callback(request: Request) -> Response:
            if request.method == "GET":
                return PlainTextResponse(request.query_params.get("hub.challenge", ""))
            if not answer:
                await release.wait()  # never, as far as the test goes
                return Response(status_code=204)
            await anyio.sleep(0.05)  # a real callback takes a moment: one process cannot do it all at once
            good[request.path_params["n"]] += 1
            return Response(status_code=204)

        return Starlette(routes=[Route("/cb/{n}", callback, methods=["GET", "POST"])])

    settings = Settings(
        database_url=database,
        redis_url=broker_url,
        public_url="http://hub.test",
        migrate=False,
        allow_private_networks=True,
        delivery_concurrency=4,  # so a claim's room (2 x 4) is far below the rows of one publish
        delivery_per_host=2,
        delivery_timeout=120.0,  # the silent host's sends stay in flight for the whole test
        outbox_scan_interval=0.1,
    )
    local = ("127.0.0.1", 4711)
    async with AsyncExitStack() as stack:
        silent_base = await stack.enter_async_context(serve_live(callback_app(answer=False)))
        stack.callback(release.set)  # before that server stops: it waits for the requests it holds
        good_base = await stack.enter_async_context(serve_live(callback_app(answer=True)))
        apps = [create_app(settings) for _ in range(2)]
        a, b = [await stack.enter_async_context(running(app, local)) for app in apps]
        topic = "https://example.com/silent-host"
        for n in range(silent_subscribers):
            await subscribe(a, "", topic, f"{silent_base}/cb/{n}")
        for n in range(good_subscribers):
            await subscribe(b, "", topic, f"{good_base}/cb/{n}")
        await wait_for(
            lambda: _equals(active_subscriptions(database), silent_subscribers + good_subscribers), timeout=30
        )
        t0 = time.monotonic()
        await publish(a, "", topic, "u0")
        await wait_for(lambda: len(good) == good_subscribers, timeout=30)
        took = time.monotonic() - t0

        def sent() -> list[float]:
            return [app.state.hub.metrics.deliveries.labels("delivered")._value.get() for app in apps]

        await wait_for(lambda: sum(sent()) == good_subscribers, timeout=10)  # counted after the answer
        per_process = sent()
        engine = db.create_engine(database, pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as conn:
                held = (
                    await conn.execute(
                        text(
                            "select d.claim_worker, count(*) from hub_deliveries d join hub_subscriptions s"
                            " on s.id = d.subscription_id where s.callback like :silent and d.state = 'pending'"
                            " and d.claim_token is not null group by d.claim_worker"
                        ),
                        {"silent": silent_base + "/%"},
                    )
                ).all()
        finally:
            await engine.dispose()
    assert max(good.values()) == 1
    assert all(n > 0 for n in per_process), per_process
    room = 2 * settings.delivery_concurrency
    assert all(count <= room for _, count in held), held
    print(
        f"\nsilent host: {good_subscribers} deliveries to the answering host in {took:.2f} s, sent per process "
        f"{per_process}; silent host's rows held per process {[count for _, count in held]} of {silent_subscribers}"
    )


async def test_workers_of_a_killed_supervisor_drain_and_exit(
    launch: Callable[..., Proc], database: str, broker_url: str
) -> None:
    """``--workers 2`` whose supervisor is SIGKILLed: nobody is left to stop or restart its workers,
    so they notice the supervisor is gone, drain and exit instead of serving on for ever."""
    proc = launch("--database-url", database, "--redis-url", broker_url, "--workers", "2")
    async with httpx.AsyncClient(timeout=10) as client:
        await started(client, proc)
    children = Path(f"/proc/{proc.popen.pid}/task/{proc.popen.pid}/children").read_text().split()
    # multiprocessing's resource tracker is a child too; the workers are the spawned ones.
    workers = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
        except FileNotFoundError:
            return True

    await wait_for(lambda: all(gone(pid) for pid in workers), timeout=45, interval=0.1)
