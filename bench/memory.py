#!/usr/bin/env python3
"""Memory: reversehub's PSS beside the floor of the stack it is built on, in one run.

    .venv/bin/python bench/memory.py                              # N = 1,000 plain HTTP callbacks
    .venv/bin/python bench/memory.py --callbacks 100 --repeats 3 --peer-mb 256
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/memory.py   # that checkout's serve

Servers, each started alone in its own session and measured once it has served, one after the
other, so that none shares its pages with another of them:
  (a) the floor: a one-route Starlette app under uvicorn (uvloop, httptools), bench/floor.py;
  (b) the floor plus SQLAlchemy: the same app opening an async engine on aiosqlite and running one
      query at start (SQLAlchemy 2's asyncio layer is part of the mission);
  (c) ``reversehub serve`` on embedded SQLite, idle;
  (d) the same process once N plain HTTP callbacks subscribed (each with a hub.secret, to one Atom
      topic this process serves, which the hub fetches and parses) and were verified, then after
      one fat ping delivered to all N, and the peak sampled every 50 ms while it delivered. A
      server in this process answers the verifications and counts the deliveries (bench/fanout.py's
      CallbackServer); the work is what ../shared/bench/hub_fanout.py asks of reversehub.

Memory is PSS summed over every process of the server's session, from /proc/PID/smaps_rollup, as
../shared/bench/hub_fanout.py measures it, ``--settle`` seconds after the server became ready, was
subscribed or delivered the last callback. PSS splits a file page (libpython, a shared library)
between the processes that map it: the figure moves by a few MB with what else runs the same
Python (this bench does). The anonymous part (the heap, Python's objects) is the steadier figure
and is printed too. ``--peer-mb X`` adds each figure's ratio to a peer's (e.g. the PSS
../shared/bench/hub_fanout.py measured for Flask-WebSub). ``--repeats R`` measures every server R
times, alternating, and the table shows median [min-max].

In the project's virtual environment httpx also imports pygments (pytest installs it; httpx's
command line wants it), about 0.5 MB that an installed reversehub without the dev extras lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fanout import CallbackServer, Conn, Sink, free_port, until_active  # noqa: E402

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
STAMP = b"2024-01-01T00:00:00Z"
TOPIC = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom"><id>urn:memory</id>'
    b"<title>memory</title><updated>%s</updated><entry><id>urn:memory:0</id><title>entry 0</title>"
    b"<updated>%s</updated><content>the first entry</content></entry></feed>\n" % (STAMP, STAMP)
)
KIB_PER_MIB = 1024


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (the server and any child it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                pids.append(int(entry))
    return pids


def memory_mb(sid: int) -> dict[str, float]:
    """PSS, its anonymous part and RSS, in MiB, summed over the session's processes."""
    total = {"Pss": 0, "Pss_Anon": 0, "Rss": 0}
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in total:
                        total[key] += int(value.split()[0])
        except OSError:
            pass  # gone meanwhile
    return {
        "pss": total["Pss"] / KIB_PER_MIB,
        "anon": total["Pss_Anon"] / KIB_PER_MIB,
        "rss": total["Rss"] / KIB_PER_MIB,
    }


async def request(port: int, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    conn = Conn("127.0.0.1", port)
    try:
        status, _, _ = await conn.request(method, target, body, headers)
    finally:
        conn.close()
    return status


async def serve_topic(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The topic, one small Atom document: once subscribed, the hub fetches and parses it to know
    what it has seen (hub.fetcher), as it does in ../shared/bench/hub_fanout.py."""
    head = b'HTTP/1.1 200 OK\r\nContent-Type: application/atom+xml\r\nETag: "1"\r\nContent-Length: %d\r\n\r\n'
    try:
        while await reader.readuntil(b"\r\n\r\n"):  # GETs only: no request body to skip
            writer.write(head % len(TOPIC) + TOPIC)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class Server:
    """A server process in its own session, ready once ``GET /healthz`` answers 200; stopped (its
    whole process group) on exit."""

    def __init__(self, cmd: list[str], port: int, workdir: str) -> None:
        self.cmd, self.port = cmd, port
        self.log_path = os.path.join(workdir, f"server-{port}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, start_new_session=True)

    async def __aenter__(self) -> Server:
        deadline = time.monotonic() + 60
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                if await request(self.port, "GET", "/healthz") == 200:
                    return self
            except OSError:
                pass  # not listening yet
            await asyncio.sleep(0.05)
        await self.__aexit__()
        with open(self.log_path, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{' '.join(self.cmd)} not ready (exit status {self.proc.poll()}):\n{tail}")

    def memory(self) -> dict[str, float]:
        return memory_mb(self.proc.pid)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


async def floor(workdir: str, with_sqlalchemy: bool, settle: float) -> dict[str, float]:
    port = free_port()
    cmd = [sys.executable, os.path.join(HERE, "floor.py"), str(port)]
    if with_sqlalchemy:
        cmd.append(f"sqlite:///{workdir}/floor-{port}.db")
    async with Server(cmd, port, workdir) as server:
        await asyncio.sleep(settle)
        return server.memory()


async def subscribe_all(
    port: int, db: str, sink: Sink, args: argparse.Namespace
) -> tuple[asyncio.Server, asyncio.Server, str]:
    """Subscribe ``sink.n`` plain HTTP callbacks (served here, counted by ``sink``), each with a
    hub.secret, to one Atom topic served here; return once all are verified and the database holds
    them all active: the callbacks' server, the topic's server (both to close) and the topic."""
    n = sink.n
    callbacks = await asyncio.get_running_loop().create_server(
        lambda: CallbackServer(sink), "127.0.0.1", 0, backlog=4096
    )
    topics = await asyncio.start_server(serve_topic, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{callbacks.sockets[0].getsockname()[1]}"
    topic = f"http://127.0.0.1:{topics.sockets[0].getsockname()[1]}/topic"
    gate = asyncio.Semaphore(64)

    async def subscribe(i: int) -> None:
        form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": f"{base}/cb/{i}"}
        form["hub.secret"] = f"secret-{i}"  # deliveries are signed, as in hub_fanout.py
        while True:
            async with gate:
                status = await request(port, "POST", "/hub", urllib.parse.urlencode(form).encode(), FORM)
            if status != 503:  # 503: too many verifications waiting; the hub says to come back
                break
            await asyncio.sleep(1.0)
        if status != 202:
            raise RuntimeError(f"subscribe answered {status}")

    await asyncio.gather(*(subscribe(i) for i in range(n)))
    await asyncio.wait_for(sink.all_verified.wait(), args.timeout)
    await until_active(db, n, args.timeout)
    return callbacks, topics, topic


def serve_cmd(args: argparse.Namespace, port: int, db: str) -> list[str]:
    return [*args.rh_cmd, "serve", "--host", "127.0.0.1", "--port", str(port), "--database-url", f"sqlite:///{db}",
            "--allow-private-networks"]  # fmt: skip


async def reversehub(workdir: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """(c) idle, then (d) one publish to ``args.callbacks`` HTTP callbacks, on one ``serve`` process."""
    port = free_port()
    db = os.path.join(workdir, f"hub-{port}.db")
    async with Server(serve_cmd(args, port, db), port, workdir) as server:
        await asyncio.sleep(args.settle)
        idle = server.memory()
        sink = Sink(args.callbacks)
        callbacks, topics, topic = await subscribe_all(port, db, sink, args)
        await asyncio.sleep(args.settle)
        subscribed = server.memory()
        peak = dict(subscribed)

        def sample() -> dict[str, float]:
            now = server.memory()
            peak.update({key: max(value, now[key]) for key, value in peak.items()})
            return now

        async def sampling() -> None:
            while True:
                sample()
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sampling())
        sink.body = b"<entry>memory %d</entry>" % time.time_ns()
        target = "/publish?" + urllib.parse.urlencode({"hub.topic": topic})
        status = await request(port, "POST", target, sink.body, {"Content-Type": "application/atom+xml"})
        if not 200 <= status < 300:
            raise RuntimeError(f"publish answered {status}")
        await asyncio.wait_for(sink.done.wait(), args.timeout)
        await asyncio.sleep(args.settle)
        sampler.cancel()
        after = sample()
        callbacks.close()
        topics.close()
    return {"idle": idle, "subscribed": subscribed, "after": after, "peak": peak}


async def per_subscription(workdir: str, n: int, args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """PSS of a fresh ``serve`` process idle, and once ``n`` subscriptions are verified and active."""
    port = free_port()
    db = os.path.join(workdir, f"hub-{port}.db")
    async with Server(serve_cmd(args, port, db), port, workdir) as server:
        await asyncio.sleep(args.settle)
        idle = server.memory()
        callbacks, topics, _ = await subscribe_all(port, db, Sink(n), args)
        await asyncio.sleep(args.settle)
        subscribed = server.memory()
        callbacks.close()
        topics.close()
    return idle, subscribed


async def run_per_subscription(args: argparse.Namespace) -> None:
    """Memory per active subscription: the growth of a fresh process's PSS from idle to N verified
    subscriptions, over N, for each N; and between two N, the growth per subscription added."""
    growth: dict[int, list[float]] = {n: [] for n in args.per_subscription}
    anon: dict[int, list[float]] = {n: [] for n in args.per_subscription}
    with tempfile.TemporaryDirectory(prefix="memory-") as workdir:
        for _ in range(args.repeats):
            for n in args.per_subscription:
                idle, subscribed = await per_subscription(workdir, n, args)
                growth[n].append((subscribed["pss"] - idle["pss"]) * KIB_PER_MIB / n)
                anon[n].append((subscribed["anon"] - idle["anon"]) * KIB_PER_MIB / n)
                print(
                    f"# N={n:,}: PSS {idle['pss']:.1f} MB idle -> {subscribed['pss']:.1f} MB subscribed",
                    file=sys.stderr,
                    flush=True,
                )
    print("| active subscriptions N | PSS growth per subscription KiB | anonymous KiB |\n|---|---|---|")
    for n in args.per_subscription:
        print(f"| {n:,} | {cell(growth[n])} | {cell(anon[n])} |")
    ns = sorted(args.per_subscription)
    for small, large in zip(ns, ns[1:], strict=False):
        added = (statistics.median(growth[large]) * large - statistics.median(growth[small]) * small) / (large - small)
        print(f"# from N={small:,} to N={large:,}: {added:.2f} KiB of PSS per subscription added (medians)")


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def ratio(values: list[float], of: list[float]) -> str:
    return f"{statistics.median(values) / statistics.median(of):.2f}"


async def run(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict[str, float]]] = {"a": [], "b": [], "c": [], "subscribed": [], "d": [], "peak": []}
    with tempfile.TemporaryDirectory(prefix="memory-") as workdir:
        for _ in range(args.repeats):
            rows["a"].append(await floor(workdir, False, args.settle))
            rows["b"].append(await floor(workdir, True, args.settle))
            hub = await reversehub(workdir, args)
            rows["c"].append(hub["idle"])
            rows["subscribed"].append(hub["subscribed"])
            rows["d"].append(hub["after"])
            rows["peak"].append(hub["peak"])
    labels = {
        "a": "(a) floor: uvicorn + Starlette, one route",
        "b": "(b) floor + SQLAlchemy async engine (aiosqlite), one query",
        "c": "(c) reversehub serve, idle",
        "subscribed": f"(d) reversehub serve, {args.callbacks:,} subscriptions verified, before the publish",
        "d": f"(d) reversehub serve, after one publish to {args.callbacks:,} HTTP callbacks",
        "peak": "(d) peak while delivering",
    }
    pss = {k: [m["pss"] for m in v] for k, v in rows.items()}
    anon = {k: [m["anon"] for m in v] for k, v in rows.items()}
    peer = f" | / peer {args.peer_mb:g} MB" if args.peer_mb else ""
    print(f"| server | PSS MB | anon PSS MB | RSS MB | PSS / (a) | PSS / (b){peer} |")
    print("|---|---|---|---|---|---|" + ("---|" if args.peer_mb else ""))
    for key, label in labels.items():
        rss = [m["rss"] for m in rows[key]]
        line = f"| {label} | {cell(pss[key])} | {cell(anon[key])} | {cell(rss)} "
        line += f"| {ratio(pss[key], pss['a'])} | {ratio(pss[key], pss['b'])} |"
        if args.peer_mb:
            line += f" {statistics.median(pss[key]) / args.peer_mb:.2f} |"
        print(line)
    above = {
        k: (
            statistics.median(pss[k]) - statistics.median(pss["b"]),
            statistics.median(anon[k]) - statistics.median(anon["b"]),
        )
        for k in ("c", "d")
    }
    print(
        f"\nreversehub above (b): idle {above['c'][0]:+.1f} MB PSS ({above['c'][1]:+.1f} anonymous), "
        f"after the fan-out {above['d'][0]:+.1f} MB ({above['d'][1]:+.1f} anonymous)."
    )
    if args.peer_mb:
        tenth = args.peer_mb / 10
        print(f"A tenth of the peer is {tenth:.1f} MB; the floor (b) alone is {statistics.median(pss['b']):.1f} MB.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callbacks", type=int, default=1000, help="N plain HTTP callbacks for (d)")
    parser.add_argument("--repeats", type=int, default=1, help="measure every server R times (median [min-max])")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between ready/delivered and measuring")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the setup and for the fan-out")
    parser.add_argument("--peer-mb", type=float, default=None, help="a peer's PSS in MB, for a ratio column")
    parser.add_argument(
        "--rh-cmd",
        default=os.path.join(os.path.dirname(sys.executable), "reversehub"),
        help="command that runs reversehub's CLI (split on spaces) [default: the script beside this Python]",
    )
    parser.add_argument(
        "--per-subscription",
        type=int,
        nargs="+",
        metavar="N",
        help="only measure PSS growth per verified subscription, from idle to N (e.g. 1000 10000)",
    )
    args = parser.parse_args()
    args.rh_cmd = args.rh_cmd.split()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # N callbacks' connections, for large N
    asyncio.run(run_per_subscription(args) if args.per_subscription else run(args))


if __name__ == "__main__":
    main()
