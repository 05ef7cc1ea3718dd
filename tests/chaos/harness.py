"""The chaos harness: real processes we can kill, stop and restart, and a receiver that counts.

Nothing here touches the shared PostgreSQL (5432) or Redis (6379): each test starts its own
PostgreSQL cluster (initdb + pg_ctl, fsync off) and its own ``redis-server`` on free ports in a
temporary directory, so that it may stop and restart them as it likes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from relay.wire import HttpResponse, parse_request, serialize_response
from tests.relay.helpers import links
from tests.support import free_port, unavailable, wait_for

PG_BIN = Path(os.environ.get("REVERSEHUB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))


def scratch_dir() -> Path:
    """A temporary directory PostgreSQL may enter: initdb refuses root, so under root the cluster runs
    as ``postgres``, who cannot enter pytest's per-user (0700) temporary tree."""
    path = Path(tempfile.mkdtemp(prefix="reversehub-chaos-"))
    path.chmod(0o755)
    return path


def _run_as() -> dict[str, str]:
    return {"user": "postgres"} if os.geteuid() == 0 else {}


class Postgres:
    """A PostgreSQL cluster of our own: ``start()``, ``stop()`` (immediate: as if it crashed), ``url``."""

    def __init__(self, root: Path) -> None:
        if not (PG_BIN / "initdb").exists():
            unavailable(f"PostgreSQL binaries not found in {PG_BIN} (REVERSEHUB_TEST_PG_BIN)")
        root.mkdir()
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        subprocess.run(
            [PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            **_run_as(),  # type: ignore[call-overload]
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?ssl=disable"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [PG_BIN / "pg_ctl", "-D", self.data, "-w", "-t", "60", *args],
            check=True,
            capture_output=True,
            **_run_as(),  # type: ignore[call-overload]
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-o", options, "-l", str(self.root / "postgres.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


class Redis:
    """A ``redis-server`` of our own, nothing persisted: a restart loses every key, as a crash would."""

    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server not found (apt-get install redis-server)")
        self.root = root
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.root / "redis.log").open("ab") as log:
            self.popen = subprocess.Popen([*argv, "--dir", str(self.root)], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.popen.poll() is None, (self.root / "redis.log").read_text()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()  # SIGKILL: connections reset, keys gone
            self.popen.wait(10)
        self.popen = None


@dataclass
class Serve:
    """One ``reversehub serve`` process, started again on the same port by :meth:`restart`."""

    flags: list[str]
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [REVERSEHUB, "serve", "--port", str(self.port), "--public-url", self.base, *self.flags]
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        if self.popen is not None:
            self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, client: httpx.AsyncClient, timeout: float = 45) -> None:
        async def up() -> bool:
            assert self.alive(), self.output()[-4000:]
            try:
                return (await client.get(self.base + "/healthz", timeout=5)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(up, timeout=timeout, interval=0.05)


@dataclass
class Arrival:
    webhook_id: str
    seq: int
    body: bytes
    at: float
    port: int  # the sender's source port: which process sent it


class Receiver:
    """Callbacks ``/cb/{i}`` that echo every challenge and record every delivery, by subscription.

    Each answer waits ``delay`` seconds, so a fan-out lasts long enough for a fault to land in it.
    """

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.verified: set[str] = set()
        self.arrivals: dict[str, list[Arrival]] = defaultdict(list)
        self.app = Starlette(routes=[Route("/{kind}/{i}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        key = f"{request.path_params['kind']}/{request.path_params['i']}"
        if request.method == "GET":
            self.verified.add(key)
            return PlainTextResponse(request.query_params["hub.challenge"])
        h, port = request.headers, request.client.port if request.client else 0
        self.record(key, h["webhook-id"], int(h["x-hub-sequence"]), await request.body(), port)
        await anyio.sleep(self.delay)
        return Response(status_code=204)

    def record(self, key: str, webhook_id: str, seq: int, body: bytes, port: int) -> None:
        self.arrivals[key].append(Arrival(webhook_id, seq, body, time.monotonic(), port))

    def count(self) -> int:
        return sum(len(a) for a in self.arrivals.values())


@dataclass
class Figures:
    """What a fan-out under a fault came to, for subscriptions ``keys`` and the publishes that got 2xx."""

    expected: int = 0
    missing: int = 0
    duplicates: int = 0  # the same webhook-id again: subscribers can drop these
    new_id_duplicates: int = 0  # the same publish under another webhook-id: they cannot
    out_of_order: int = 0
    extra: int = 0  # deliveries of publishes that were cut off (no 2xx): allowed, counted
    done_at: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, receiver: Receiver, keys: list[str], accepted: list[bytes]) -> Figures:
        f = cls(expected=len(keys) * len(accepted))
        wanted = set(accepted)
        rank = {body: n for n, body in enumerate(accepted)}
        last = 0.0
        for key in keys:
            arrivals = receiver.arrivals.get(key, [])
            seen: dict[str, Arrival] = {}
            top = -1
            for a in arrivals:
                if a.webhook_id in seen:
                    f.duplicates += 1
                    continue
                seen[a.webhook_id] = a
                if a.seq < top:  # a new delivery after a later one of the same subscription
                    f.out_of_order += 1
                top = max(top, a.seq)
            firsts = [a for a in seen.values() if a.body in wanted]
            f.new_id_duplicates += len(firsts) - len({a.body for a in firsts})
            f.extra += len(seen) - len(firsts)
            got = {a.body for a in firsts}
            f.missing += len(wanted - got)
            if [rank[a.body] for a in firsts] != sorted(rank[a.body] for a in firsts):
                f.out_of_order += 1
            if firsts:
                last = max(last, max(a.at for a in firsts))
        f.done_at = last if f.missing == 0 and f.expected else None
        return f

    def done(self) -> bool:
        return self.missing == 0


class Tally:
    """Statuses of the requests a test made; a transport failure or a timeout is counted by its name."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, kind: str, outcome: int | str) -> None:
        self.counts[kind][str(outcome)] += 1

    def total(self, outcome: str) -> int:
        return sum(c.get(outcome, 0) for c in self.counts.values())

    def __str__(self) -> str:
        return "; ".join(f"{k}: {dict(sorted(v.items()))}" for k, v in sorted(self.counts.items()))

    __repr__ = __str__


def logged(*procs: Serve) -> dict[str, int]:
    """What the servers logged of errors: tracebacks (retried failures log theirs too), and 500s."""
    text = "".join(p.output() for p in procs)
    return {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "asgi_500": text.count("Exception in ASGI application"),
    }


async def judge(
    title: str, figures: Figures, since: float, bound: float, tally: Tally, database_url: str, **more: object
) -> None:
    """Print the figures of a fan-out under a fault, then assert them: nothing accepted missing, all of
    it within ``bound`` seconds of ``since``, order per subscription held, no 500. When deliveries are
    missing, what is left in the outbox is printed too."""
    took = None if figures.done_at is None else round(figures.done_at - since, 1)
    if figures.missing:
        more["outbox_left"] = await outbox_pending(database_url)
    report(
        title,
        deliveries=figures.expected,
        missing=figures.missing,
        duplicates=figures.duplicates,
        new_id_duplicates=figures.new_id_duplicates,
        out_of_order=figures.out_of_order,
        cut_off_publishes_delivered=figures.extra,
        seconds_to_all_delivered=took,
        bound=bound,
        requests=tally,
        **more,
    )
    assert figures.missing == 0, f"{figures.missing} of {figures.expected} deliveries missing"
    assert took is not None and took <= bound, f"everything delivered after {took} s, bound {bound} s"
    assert figures.out_of_order == 0
    assert figures.new_id_duplicates == 0
    assert tally.total("500") == 0, tally


def report(title: str, **figures: object) -> str:
    line = f"\n[chaos] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    return line


# The fan-out workload ----------------------------------------------------------------------------
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


async def outbox_pending(database_url: str) -> list[tuple[object, ...]]:
    """What is left in the outbox, for a post-mortem of missing deliveries: per state, attempts,
    claimed or not and last error, how many rows and how soon the earliest is due (seconds)."""
    from sqlalchemy import text

    from reversehub.core import db

    now = time.time()
    engine = db.create_engine(database_url)
    try:
        async with engine.connect() as conn:
            query = text(
                "select state, attempts, claim_token is not null, substr(coalesce(last_error, ''), 1, 60),"
                " count(*), min(next_attempt_at) from hub_deliveries where state != 'delivered'"
                " group by 1, 2, 3, 4 order by 5 desc limit 10"
            )
            rows = (await conn.execute(query)).all()
    finally:
        await engine.dispose()
    return [(*row[:5], round(row[5] - now, 1)) for row in rows]


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


def sending(receiver: Receiver, procs: list[Serve], last: int = 100) -> Serve:
    """The process that sent most of the ``last`` deliveries: it holds claims right now (whoever
    claims first may take every due row), so killing it is the fault that matters. Found from the
    senders' source ports and the sockets each process holds (Linux ``/proc``)."""
    recent = sorted((a for arrivals in receiver.arrivals.values() for a in arrivals), key=lambda a: a.at)[-last:]
    inode_of_port = _tcp_inodes()
    counts = []
    for proc in procs:
        assert proc.popen is not None
        held = _socket_inodes(proc.popen.pid)
        counts.append(sum(1 for a in recent if inode_of_port.get(a.port) in held))
    return procs[counts.index(max(counts))]


def _tcp_inodes() -> dict[int, str]:
    """Local port -> socket inode of every TCP socket on the machine."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                found[int(fields[1].rsplit(":", 1)[1], 16)] = fields[9]
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def mid_fan_out(receiver: Receiver) -> int:
    """Deliveries so far, asserting the fault landed mid fan-out."""
    count = receiver.count()
    assert count < SUBSCRIBERS * UPDATES, "the fan-out ended before the fault: slow the receiver down"
    return count


async def settle(receiver: Receiver, keys: list[str], accepted: list[bytes], timeout: float) -> Figures:
    """Wait up to ``timeout`` seconds for every accepted publish to reach every subscriber; the figures."""
    deadline = time.monotonic() + timeout
    while True:
        figures = Figures.of(receiver, keys, accepted)
        if figures.done() or time.monotonic() > deadline:
            return figures
        await anyio.sleep(0.05)


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
        while not until.is_set() and len(resumed) < len(self.procs):
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


class _Phased(Tally):
    def __init__(self, inner: Tally, phase: str) -> None:
        self.inner, self.phase = inner, phase

    def add(self, kind: str, outcome: int | str) -> None:
        self.inner.add(f"{kind} {self.phase}", outcome)
