#!/usr/bin/env python3
"""Hub fan-out: N subscribers, one publish; time from the publish to the last delivery.

    .venv/bin/python bench/fanout.py 1000 10000                 # relay callbacks (default)
    .venv/bin/python bench/fanout.py --callbacks http 1000 10000  # plain HTTP callbacks
    .venv/bin/python bench/fanout.py --rounds 3 --setup-timeout 1500 10000  # 3 publishes, median
    .venv/bin/python bench/fanout.py --baseline --rounds 3 1000 10000  # and a bare relay, and the ratio
    .venv/bin/python bench/fanout.py --ptth-share 0.5 1000 10000  # half the subscribers over PTTH

Relay mode (the mission path): each subscriber claims its own relay name (``POST /reversehttp``),
subscribes with its public URL as ``hub.callback``, answers the verification over its long-poll,
and keeps one poll waiting; the hub's deliveries reach it in-process through the relay. HTTP mode:
every callback is a path on one asyncio HTTP server in this process. ``--ptth-share F`` (relay mode)
makes that share of the subscribers hold a PTTH connection (draft-kazuho-ptth-ptth-00: an upgrade
on the request URL, then requests written to them on it) instead of a long-poll, spread evenly
among the long-pollers; the bare relay of ``--baseline`` long-polls them all.

The hub is ``reversehub serve`` in a subprocess (SQLite in a temporary directory), so its CPU is
its own; ``--in-process`` runs it in this process instead (with ``--profile FILE`` for cProfile).
Prints: N, seconds from the publish to the last delivery, deliveries per second, the hub's CPU
seconds in that window (and per delivery), the bench's own CPU seconds (its clients and pollers;
on a 2-core machine they share the cores with the hub) and the hub's peak RSS. ``--rounds R``
publishes R times to the same subscribers (setting up 10,000 relay subscribers takes minutes)
and prints the median too. ``--baseline`` (relay mode) then runs the same subscribers against a
bare relay (:func:`serve_bare_relay`) and prints reversehub's median time and CPU over the bare
relay's, and the ratio of their first deliveries: the share of the fan-out that is reversehub's own
work, whatever the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STALL = 30.0  # seconds without a verification before the unverified subscribe again


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- a minimal HTTP/1.1 client


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length framing only, which the server sends)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        assert self.reader is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        hl = head[:-4].decode("latin-1").split("\r\n")
        status = int(hl[0].split(" ", 2)[1])
        hdrs: dict[str, list[str]] = {}
        for line in hl[1:]:
            k, _, v = line.partition(":")
            hdrs.setdefault(k.strip().lower(), []).append(v.strip())
        length = int(hdrs.get("content-length", ["0"])[0])
        data = await self.reader.readexactly(length) if length else b""
        if "close" in ",".join(hdrs.get("connection", [])).lower():
            self.close()
        return status, hdrs, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def links(headers: dict[str, list[str]]) -> dict[str, str]:
    out = {}
    for value in headers.get("link", []):
        for part in value.split(","):
            url, _, params = part.partition(";")
            for p in params.split(";"):
                k, _, v = p.strip().partition("=")
                if k == "rel":
                    out[v.strip('"')] = url.strip().strip("<>")
    return out


# ---------------------------------------------------------------- HTTP callbacks (one server)


class Sink:
    def __init__(self, n: int) -> None:
        self.n = n
        self.body = b""
        self.got: dict[str, float] = {}
        self.done = asyncio.Event()
        self.verified: set[str] = set()
        self.all_verified = asyncio.Event()

    def deliver(self, key: str, body: bytes) -> None:
        if body == self.body and key not in self.got:
            self.got[key] = time.monotonic()
            if len(self.got) >= self.n:
                self.done.set()

    def verify(self, key: str) -> None:
        self.verified.add(key)
        if len(self.verified) >= self.n:
            self.all_verified.set()


async def until_verified(
    sink: Sink,
    callbacks: dict[str, str],
    resubscribe: Callable[[list[str]], Awaitable[None]],
    timeout: float,
    busy: Callable[[], bool] = lambda: False,
) -> None:
    """Wait until every subscriber has answered its verification.

    Under load a verification can be lost (the relay answers 504 when a subscriber's first poll
    arrives later than --unavailable-timeout), so once every subscribe has been sent (``busy()``
    false, all N callbacks known) and no verification has come for STALL seconds, the subscribers
    still missing subscribe again (``callbacks``: key -> callback URL)."""
    deadline = time.monotonic() + timeout
    seen = -1
    while not sink.all_verified.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sink.n - len(sink.verified)} subscribers not verified")
        try:
            await asyncio.wait_for(sink.all_verified.wait(), STALL)
        except TimeoutError:
            if len(sink.verified) == seen and len(callbacks) >= sink.n and not busy():
                missing = [cb for key, cb in callbacks.items() if key not in sink.verified]
                print(f"# subscribing {len(missing)} unverified callbacks again", file=sys.stderr, flush=True)
                await resubscribe(missing)
            seen = len(sink.verified)


async def until_active(path: str, n: int, timeout: float) -> None:
    """Wait until the hub's SQLite database holds ``n`` active subscriptions."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            (active,) = db.execute("SELECT count(*) FROM hub_subscriptions WHERE state = 'active'").fetchone()
        if active >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n - active} subscriptions not active")
        await asyncio.sleep(0.2)


class CallbackServer(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.tr: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.tr is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            path, _, query = target.partition("?")
            if method == "GET":
                q = urllib.parse.parse_qs(query)
                out = q.get("hub.challenge", [""])[0].encode()
                if q.get("hub.mode", [""])[0] == "subscribe":
                    self.sink.verify(path)
                self.tr.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
            else:
                self.sink.deliver(path, body)
                self.tr.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.tr = None


# ---------------------------------------------------------------- relay subscribers


REPLY_OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


def parse_relayed(data: bytes) -> tuple[str, str, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    return method, target, body


async def relay_subscriber(
    i: int,
    host: str,
    port: int,
    sink: Sink,
    gate: asyncio.Semaphore,
    to_subscribe: asyncio.Queue[str],
    stop: asyncio.Event,
    callbacks: dict[str, str],
    bare: bool = False,
    ptth: bool = False,
) -> None:
    """Claim a relay name, queue its public URL for subscribing, then poll: answer the verification
    and the deliveries, each reply posted back to the request URL the request came from (``ptth``:
    take them over a PTTH connection instead, :func:`ptth_subscriber`)."""
    conn = Conn(host, port)
    name = f"fan{i}x{os.getpid()}"
    async with gate:  # new connections in bounded waves: the listen backlog is finite
        st, hdrs, _ = await conn.request(
            "POST",
            "/reversehttp",
            f"name={name}&token=t{i}".encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
    if st not in (200, 201, 204):
        raise RuntimeError(f"registration answered {st}")
    link = links(hdrs)
    poll_url = urllib.parse.urlsplit(link["first"])
    poll_target = poll_url.path + ("?" + poll_url.query if poll_url.query else "")
    callbacks[str(i)] = link["related"].rstrip("/") + "/cb"
    if bare:
        sink.verify(str(i))  # the bare relay has no hub: nothing to subscribe or verify
    elif ptth:
        conn.close()
        # Subscribed once the transposed connection stands, so the verification finds it there.
        ready = asyncio.Event()
        connection = asyncio.ensure_future(ptth_subscriber(i, host, port, poll_target, sink, gate, ready))
        await asyncio.wait([connection, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if connection.done():
            connection.result()  # the upgrade failed: its error
        to_subscribe.put_nowait(callbacks[str(i)])
        await connection
        return
    else:
        to_subscribe.put_nowait(callbacks[str(i)])
    while not stop.is_set():
        st, hdrs, data = await conn.request("GET", poll_target)
        if st == 204:
            continue
        if st != 200:
            raise RuntimeError(f"poll answered {st}")
        method, target, body = parse_relayed(data)
        if method == "GET":
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
            out = q.get("hub.challenge", [""])[0].encode()
            if q.get("hub.mode", [""])[0] == "subscribe":
                sink.verify(str(i))
        else:
            sink.deliver(str(i), body)
            out = b""
        nxt = links(hdrs).get("next")
        await conn.request("POST", poll_target, REPLY_OK % len(out) + out, {"Content-Type": "message/http"})
        if nxt:
            u = urllib.parse.urlsplit(nxt)
            poll_target = u.path + ("?" + u.query if u.query else "")


PTTH_UPGRADE = "Connection: upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n"


async def ptth_subscriber(
    i: int, host: str, port: int, poll_target: str, sink: Sink, gate: asyncio.Semaphore, ready: asyncio.Event
) -> None:
    """The relay subscriber's PTTH form: one upgrade on its request URL (``ready`` once it stands),
    then answer the requests the relay writes on that connection (Content-Length framing, which the
    hub's requests carry)."""
    async with gate:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        writer.write(f"GET {poll_target} HTTP/1.1\r\nHost: {host}:{port}\r\n{PTTH_UPGRADE}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"the server does not offer PTTH: {head.split(b' ', 2)[1].decode()} to the upgrade")
    ready.set()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
                elif k.strip().lower() == "transfer-encoding":
                    raise RuntimeError("a chunked request on the PTTH connection: this bench reads Content-Length only")
            body = await reader.readexactly(length) if length else b""
            out = b""
            if method == "GET":
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
                out = q.get("hub.challenge", [""])[0].encode()
                if q.get("hub.mode", [""])[0] == "subscribe":
                    sink.verify(str(i))
            else:
                sink.deliver(str(i), body)
            writer.write(REPLY_OK % len(out) + out)
    finally:
        writer.close()


async def subscriber_pool(
    host: str, port: int, topic: str, to_subscribe: asyncio.Queue[str], sending: list[int]
) -> None:
    """One keep-alive connection sending subscribe requests for queued callbacks (``sending[0]``:
    how many are on their way right now)."""
    conn = Conn(host, port)
    while True:
        callback = await to_subscribe.get()
        form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
        sending[0] += 1
        try:
            st, _, _ = await conn.request(
                "POST",
                "/hub",
                urllib.parse.urlencode(form).encode(),
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
        finally:
            sending[0] -= 1
        if st != 202:  # e.g. 503 while the hub has too many verifications waiting: later
            await asyncio.sleep(1.0)
            to_subscribe.put_nowait(callback)


# ---------------------------------------------------------------- the baseline: a bare relay


def serve_bare_relay(port: int) -> None:
    """The least a Python ASGI server does for a relay fan-out: a Starlette app under uvicorn
    (httptools, uvloop, no access log) with the same exchanges per delivery as reversehub (the
    held poll's answer, the reply's POST, the next poll) and nothing else: no database, no
    outbox, no lease, no retry, no signature, no disconnect watching, no limits.

    ``POST /reversehttp`` (form ``name``) gives the poll URL (``rel="first"``) and the public
    URL (``rel="related"``); ``GET /r/NAME`` waits for a request; ``POST /r/NAME`` takes the
    reply (202); ``POST /publish`` answers 204 at once and delivers the body as message/http
    (a POST to ``/relay/NAME/cb``) to every waiting poll, at most ``DELIVERY_CONCURRENCY`` at a
    time, each one in flight until its reply came back, as reversehub's outbox does. The collector gets the settings
    ``reversehub serve`` has (reversehub.server.serve): with CPython's defaults, 10,000 held polls make
    each full collection a pause of a second or more, and the ratio would measure that."""
    import gc

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from reversehub.core.settings import Settings
    from reversehub.server.serve import GC_THRESHOLDS

    DELIVERY_CONCURRENCY = Settings.delivery_concurrency  # noqa: N806 (reversehub's default bound)

    waiting: dict[str, asyncio.Future[bytes]] = {}  # name -> its held poll
    replies: dict[str, asyncio.Future[None]] = {}  # name -> the reply its delivery waits for
    tasks: set[asyncio.Task[None]] = set()

    async def register(request: Request) -> Response:
        name = urllib.parse.parse_qs((await request.body()).decode())["name"][0]
        origin = f"http://127.0.0.1:{port}"
        return Response(
            status_code=201,
            headers={"link": f'<{origin}/r/{name}>; rel="first", <{origin}/relay/{name}/>; rel="related"'},
        )

    async def request_url(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "POST":
            await request.body()
            reply = replies.pop(name, None)
            if reply is not None and not reply.done():
                reply.set_result(None)
            return Response(b"accepted\n", status_code=202, media_type="text/plain")
        future = waiting[name] = asyncio.get_running_loop().create_future()
        try:
            message = await future
        finally:
            if waiting.get(name) is future:
                del waiting[name]
        return Response(
            message,
            media_type="message/http",
            headers={"link": f'<http://127.0.0.1:{port}/r/{name}>; rel="next"', "cache-control": "no-store"},
        )

    async def deliver(name: str, message: bytes, slots: asyncio.Semaphore) -> None:
        async with slots:
            poll = waiting.get(name)
            if poll is None or poll.done():
                return
            reply = replies[name] = asyncio.get_running_loop().create_future()
            poll.set_result(message)
            await reply

    async def publish(request: Request) -> Response:
        body = await request.body()
        slots = asyncio.Semaphore(DELIVERY_CONCURRENCY)
        for name in list(waiting):
            head = f"POST /relay/{name}/cb HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {len(body)}\r\n"
            task = asyncio.ensure_future(deliver(name, head.encode() + b"\r\n" + body, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return Response(status_code=204)

    async def healthz(request: Request) -> Response:
        return Response(b"ok\n", media_type="text/plain")

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        yield

    app = Starlette(
        routes=[
            Route("/reversehttp", register, methods=["POST"]),
            Route("/r/{name}", request_url, methods=["GET", "POST"]),
            Route("/publish", publish, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


# ---------------------------------------------------------------- the hub


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def wait_ready(base: str, timeout: float = 30) -> None:
    u = urllib.parse.urlsplit(base)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = Conn(u.hostname or "127.0.0.1", u.port or 80)
            st, _, _ = await c.request("GET", "/healthz")
            c.close()
            if st == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("hub did not become ready")


async def publish_round(
    n: int,
    pid: int,
    port: int,
    topic: str,
    sink: Sink,
    args: argparse.Namespace,
    target: str = "",
    cpu: Callable[[], float] | None = None,
    peak_rss_mb: Callable[[], float] | None = None,
) -> dict[str, float]:
    """One fat ping to all N subscribers; times it until the last of them has the body. ``target``
    (the publish's path, default /publish?hub.topic=TOPIC), ``cpu`` and ``peak_rss_mb`` (the
    server's, default those of process ``pid``) let another server be timed the same way."""
    cpu = cpu or (lambda: proc_cpu(pid))
    peak_rss_mb = peak_rss_mb or (lambda: proc_rss_mb(pid))
    sink.got = {}
    sink.done = asyncio.Event()
    sink.body = b"<entry>fan-out %d</entry>" % time.time_ns()
    cpu0 = cpu()
    own0 = time.process_time()
    pub = Conn("127.0.0.1", port)
    t0 = time.monotonic()
    st, _, _ = await pub.request(
        "POST",
        target or "/publish?" + urllib.parse.urlencode({"hub.topic": topic}),
        sink.body,
        {"Content-Type": "application/atom+xml"},
    )
    t_ack = time.monotonic() - t0
    pub.close()
    if not 200 <= st < 300:
        raise RuntimeError(f"publish answered {st}")
    await asyncio.wait_for(sink.done.wait(), args.round_timeout)
    times = sorted(sink.got.values())
    span = times[-1] - t0
    return {
        "first_ms": (times[0] - t0) * 1000,
        "half_s": times[len(times) // 2] - t0,
        "n": n,
        "publish_ack_ms": t_ack * 1000,
        "all_delivered_s": span,
        "deliveries_per_s": n / span,
        "hub_cpu_s": cpu() - cpu0,
        # With --in-process this is the hub's CPU too; otherwise the bench's own (clients, pollers).
        "bench_cpu_s": time.process_time() - own0,
        "hub_peak_rss_mb": peak_rss_mb(),
    }


async def run_one(n: int, args: argparse.Namespace, bare: bool = False) -> list[dict[str, float]]:
    """Set up ``n`` subscribers on a fresh hub (``bare``: on :func:`serve_bare_relay`) and time
    ``args.rounds`` publishes to them."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="fanout-")
    db = f"sqlite:///{tmp}/hub.db"
    flags = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database-url",
        db,
        "--allow-private-networks",
        "--poll-timeout",
        str(args.poll_timeout),
    ]
    proc = None
    server_task = None
    if bare:
        log = open(os.path.join(tmp, "bare.log"), "wb")
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve-bare-relay", str(port)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        pid = proc.pid
    elif args.in_process:
        sys.path.insert(0, ROOT)
        import uvicorn

        from reversehub.server.app import create_app
        from reversehub.server.cli import settings_from

        settings = settings_from(
            {
                "host": "127.0.0.1",
                "port": port,
                "database_url": db,
                "allow_private_networks": True,
                "poll_timeout": args.poll_timeout,
            }
        )
        if args.per_host:
            import dataclasses

            settings = dataclasses.replace(settings, delivery_per_host=args.per_host)
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        server_task = asyncio.ensure_future(server.serve())
        pid = os.getpid()
    else:
        exe = os.path.join(ROOT, ".venv", "bin", "reversehub")
        log = open(os.path.join(tmp, "serve.log"), "wb")
        proc = subprocess.Popen(
            [exe, "serve", *flags, "--log-level", "warning"], stdout=log, stderr=log, start_new_session=True
        )
        pid = proc.pid
    try:
        await wait_ready(base)
        sink = Sink(n)
        loop = asyncio.get_running_loop()
        topic = f"http://127.0.0.1:{free_port()}/topic"
        stop = asyncio.Event()
        tasks = []
        sem = asyncio.Semaphore(64)
        if args.callbacks == "http":
            server_obj = await loop.create_server(lambda: CallbackServer(sink), "127.0.0.1", 0, backlog=4096)
            cb_base = f"http://127.0.0.1:{server_obj.sockets[0].getsockname()[1]}"

            async def sub(callback: str) -> None:
                # Past 1,000 verifications waiting for one callback host the hub answers 503 with
                # Retry-After (docs/hub.md): a subscriber asks again then, as any client should.
                while True:
                    async with sem:
                        c = Conn("127.0.0.1", port)
                        form = urllib.parse.urlencode(
                            {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
                        ).encode()
                        st, hdrs, _ = await c.request(
                            "POST", "/hub", form, {"Content-Type": "application/x-www-form-urlencoded"}
                        )
                        c.close()
                    if st == 202:
                        return
                    if st != 503 or "retry-after" not in hdrs:
                        raise RuntimeError(f"subscribe answered {st}")
                    await asyncio.sleep(float(hdrs["retry-after"][0]))

            async def resubscribe(missing: list[str]) -> None:
                await asyncio.gather(*(sub(cb) for cb in missing))

            callbacks = {f"/cb/{i}": f"{cb_base}/cb/{i}" for i in range(n)}

            def busy() -> bool:
                return False  # resubscribe() returns once every subscribe was answered

            t_sub = time.monotonic()
            await resubscribe(list(callbacks.values()))
        else:
            gate = asyncio.Semaphore(64)
            to_subscribe: asyncio.Queue[str] = asyncio.Queue()
            callbacks = {}

            async def resubscribe(missing: list[str]) -> None:
                for cb in missing:
                    to_subscribe.put_nowait(cb)

            def busy() -> bool:
                return not to_subscribe.empty() or sending[0] > 0

            sending = [0]
            if not bare:
                tasks += [
                    asyncio.ensure_future(subscriber_pool("127.0.0.1", port, topic, to_subscribe, sending))
                    for _ in range(16)
                ]
            t_sub = time.monotonic()
            ptth_every = 1 / args.ptth_share if args.ptth_share and not bare else 0.0
            tasks += [
                asyncio.ensure_future(
                    relay_subscriber(
                        i,
                        "127.0.0.1",
                        port,
                        sink,
                        gate,
                        to_subscribe,
                        stop,
                        callbacks,
                        bare,
                        # Spread evenly: subscriber i is PTTH when it crosses the next multiple of 1/share.
                        ptth=bool(ptth_every) and int(i / ptth_every) != int((i + 1) / ptth_every),
                    )
                )
                for i in range(n)
            ]
        await until_verified(sink, callbacks, resubscribe, args.setup_timeout, busy)
        # A subscriber answers its challenge before the hub stores the subscription: with 10,000 of
        # them the hub is still writing activations for many seconds, and a publish meanwhile would
        # time that work too. Wait until the database holds all N (read-only, from the bench).
        t_verified = time.monotonic()
        if not bare:
            await until_active(f"{tmp}/hub.db", n, args.setup_timeout)
        print(f"# all verified; all active {time.monotonic() - t_verified:.1f} s later", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
        setup_s = time.monotonic() - t_sub
        if args.pause:  # time to attach a profiler (py-spy record --pid) to the hub
            print(f"# hub pid {pid}: publishing in {args.pause:g} s", file=sys.stderr, flush=True)
            await asyncio.sleep(args.pause)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        results = []
        for r in range(args.rounds):
            if r:
                await asyncio.sleep(1.0)  # the previous round's outcomes are being written
            results.append(await publish_round(n, pid, port, topic, sink, args))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        stop.set()
        for res in results:
            res["setup_s"] = setup_s
        return results
    finally:
        for t in tasks:
            t.cancel()
        if server_task is not None:
            server.should_exit = True
            await asyncio.wait_for(server_task, 30)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def median(results: list[dict[str, float]], key: str) -> float:
    values = sorted(r[key] for r in results)
    return values[len(values) // 2]


def report(label: str, n: int, results: list[dict[str, float]]) -> None:
    for i, r in enumerate(results, 1):
        print(
            f"| {label} | {n} | {i} | {r['publish_ack_ms']:.0f} | {r['first_ms']:.0f} | {r['half_s']:.3f} "
            f"| {r['all_delivered_s']:.3f} "
            f"| {r['deliveries_per_s']:.0f} | {r['hub_cpu_s']:.2f} | {r['hub_cpu_s'] * 1e6 / n:.0f} "
            f"| {r['bench_cpu_s']:.2f} | {r['hub_peak_rss_mb']:.0f} |",
            flush=True,
        )
    if len(results) > 1:
        print(
            f"# {label} N={n}: median of {len(results)} rounds {median(results, 'all_delivered_s'):.3f} s, "
            f"hub CPU {median(results, 'hub_cpu_s'):.2f} s (setup {results[0]['setup_s']:.0f} s)",
            flush=True,
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, nargs="*", help="numbers of subscribers")
    p.add_argument("--callbacks", choices=["relay", "http"], default="relay")
    p.add_argument("--in-process", action="store_true", help="run the hub in this process (for --profile)")
    p.add_argument("--profile", default=None, help="cProfile output file (with --in-process)")
    p.add_argument("--pause", type=float, default=0.0, help="seconds to wait before the publish (profiling)")
    p.add_argument("--per-host", type=int, default=0, help="delivery_per_host (with --in-process)")
    p.add_argument("--poll-timeout", type=float, default=60.0)
    p.add_argument("--setup-timeout", type=float, default=300.0)
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--rounds", type=int, default=1, help="publishes per setup (each timed; the median is printed too)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="relay callbacks: run the same N on a bare Starlette relay too (serve_bare_relay) and print the ratio",
    )
    p.add_argument(
        "--ptth-share",
        type=float,
        default=0.0,
        help="relay callbacks: the share of subscribers (0 to 1) that hold a PTTH connection instead of a long-poll",
    )
    p.add_argument("--serve-bare-relay", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_bare_relay:
        serve_bare_relay(args.serve_bare_relay)
        return 0
    if not args.n:
        p.error("give at least one number of subscribers")
    if not 0 <= args.ptth_share <= 1 or (args.ptth_share and args.callbacks != "relay"):
        p.error("--ptth-share is a share of relay subscribers, from 0 to 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        "| callbacks | N | round | publish ack ms | first delivered ms | half delivered s | all delivered s "
        "| deliveries/s | hub CPU s "
        "| hub CPU us/delivery | bench CPU s | hub peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        results = asyncio.run(run_one(n, args))
        label = args.callbacks + (f" ({args.ptth_share:.0%} PTTH)" if args.ptth_share else "")
        report(label, n, results)
        if args.baseline and args.callbacks == "relay":
            bare = asyncio.run(run_one(n, args, bare=True))
            report("bare relay", n, bare)
            ours, floor = median(results, "all_delivered_s"), median(bare, "all_delivered_s")
            ours_cpu, floor_cpu = median(results, "hub_cpu_s"), median(bare, "hub_cpu_s")
            ours_first, floor_first = median(results, "first_ms"), median(bare, "first_ms")
            print(
                f"# relay/bare N={n}: time {ours / floor:.2f}x ({ours:.3f} s / {floor:.3f} s), "
                f"server CPU {ours_cpu / floor_cpu:.2f}x ({ours_cpu:.2f} s / {floor_cpu:.2f} s), "
                f"first delivery {ours_first / max(floor_first, 0.001):.2f}x "
                f"({ours_first:.0f} ms / {floor_first:.0f} ms), medians",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
