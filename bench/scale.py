#!/usr/bin/env python3
"""Scale-out: relayed requests per second and hub fan-out time for 1, 2 and 4 ``serve`` processes.

    .venv/bin/python bench/scale.py                       # 1, 2, 4 processes; 10,000 idle pollers
    .venv/bin/python bench/scale.py --processes 1,2 --idle 2000 --seconds 3

Every process is ``reversehub serve`` on its own port, on one PostgreSQL database (a scratch one,
dropped afterwards) and one Redis (a fresh key prefix), all with the first one's ``--public-url`` as
behind a load balancer. Loopback only; the load generator runs on the same machine, so on a small
machine it competes with the servers for the CPU (the figures say what *this* machine does).

- relayed rps: ``--pollers`` applications, each polling on process ``i % N``, answer requests that
  ``--requesters`` keep-alive clients send to the public URLs on process ``j % N`` (so most requests
  cross processes through Redis); completed requests / ``--seconds``.
- fan-out: ``--subscribers`` subscriptions with plain HTTP callbacks (a server in this process, on
  ``--callback-ports`` ports since the hub bounds concurrency per callback host); one publish on
  process 0; time from the publish to the last delivery (median of ``--rounds``).
- per relayed request: the server processes' CPU time (user + system, from /proc) and, with
  ``--redis-stats``, Redis's own CPU and the commands it ran (``INFO commandstats``); use a Redis of
  your own for those (``redis-server --port 6391 --save ''``), as any other client's work counts too.
- ``--memory-baseline``: the same relayed run on one process with the in-process broker (no Redis),
  and the ratio of the Redis broker's rate per process to it.
- idle: ``--idle`` polls held open across the processes of the last run: time until all are
  parked, each process's RSS, and the latency of relayed requests to another name meanwhile.
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
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from fanout import CallbackServer, Conn, Sink, free_port, links, wait_ready  # noqa: E402

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def rss_mb(pid: int) -> float:
    """Resident memory now (fanout.proc_rss_mb gives the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_stats(url: str) -> tuple[float, dict[str, int]]:
    """Redis's CPU seconds and its calls per command so far (INFO cpu, INFO commandstats)."""
    u = urllib.parse.urlsplit(url)
    out = subprocess.run(
        ["redis-cli", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379), "info", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu, calls = 0.0, {}
    for line in out.splitlines():
        if line.startswith(("used_cpu_sys:", "used_cpu_user:")):
            cpu += float(line.split(":")[1])
        elif line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            calls[name] = int(rest.split(",")[0].split("=")[1])
    return cpu, calls


def target_of(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


# ---------------------------------------------------------------- processes, database, redis


class Cluster:
    def __init__(self, n: int, database: str, redis: str | None, tmp: str, poll_timeout: float) -> None:
        self.ports = [free_port() for _ in range(n)]
        self.bases = [f"http://127.0.0.1:{p}" for p in self.ports]
        exe = os.path.join(ROOT, ".venv", "bin", "reversehub")
        common = ["--database-url", database, "--allow-private-networks"]
        common += ["--redis-url", redis] if redis else []
        common += ["--poll-timeout", str(poll_timeout), "--log-level", "warning", "--public-url", self.bases[0]]
        self.redis = redis is not None
        self.procs = []
        for port in self.ports:
            log = open(os.path.join(tmp, f"serve-{n}-{port}.log"), "wb")
            cmd = [exe, "serve", "--port", str(port), *common]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True))

    async def ready(self) -> None:
        for base in self.bases:
            await wait_ready(base, timeout=60)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


async def scratch_database(server_url: str) -> str:
    sys.path.insert(0, ROOT)
    from tests import pgdb

    return await pgdb.create_database(server_url, migrate=True)


async def drop_database(url: str) -> None:
    from tests import pgdb

    await pgdb.drop_database(url)


async def metric(port: int, name: str) -> float:
    c = Conn("127.0.0.1", port)
    try:
        _, _, body = await c.request("GET", "/metrics")
    finally:
        c.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines() if line.startswith(name))


async def register(port: int, name: str) -> dict[str, str]:
    c = Conn("127.0.0.1", port)
    try:
        st, hdrs, _ = await c.request("POST", "/reversehttp", f"name={name}&token=t".encode(), FORM)
    finally:
        c.close()
    if st not in (201, 204):
        raise RuntimeError(f"registration of {name} answered {st}")
    return links(hdrs)


# ---------------------------------------------------------------- relayed requests per second


async def poller(port: int, first: str, stop: asyncio.Event) -> None:
    conn = Conn("127.0.0.1", port)
    target = target_of(first)
    while not stop.is_set():
        st, hdrs, _ = await conn.request("GET", target)
        if st != 200:
            continue
        await conn.request("POST", target, REPLY, {"Content-Type": "message/http"})
        target = target_of(links(hdrs).get("next", first))


async def requester(port: int, path: str, stop: asyncio.Event, done: list[int], errors: list[int]) -> None:
    conn = Conn("127.0.0.1", port)
    while not stop.is_set():
        st, _, _ = await conn.request("GET", path)
        (done if st == 200 else errors).append(st)


async def relayed_rps(cluster: Cluster, args: argparse.Namespace, tag: str) -> dict[str, float]:
    n = len(cluster.ports)
    names = [f"rps{tag}n{k}" for k in range(args.names)]
    urls = [await register(cluster.ports[0], name) for name in names]
    stop = asyncio.Event()
    tasks = [
        asyncio.ensure_future(poller(cluster.ports[i % n], urls[i % len(urls)]["first"], stop))
        for i in range(args.pollers)
    ]
    done: list[int] = []
    errors: list[int] = []
    await asyncio.sleep(0.5)  # the pollers are parked
    for j in range(args.requesters):
        path = target_of(urls[j % len(urls)]["related"]) + f"r{j}"
        tasks.append(asyncio.ensure_future(requester(cluster.ports[(j + 1) % n], path, stop, done, errors)))
    await asyncio.sleep(1.0)  # warm-up
    start, errors_before = len(done), len(errors)
    stats = bool(args.redis_stats and cluster.redis)
    cpu0 = [cpu_s(p.pid) for p in cluster.procs]
    redis0 = redis_stats(args.redis) if stats else (0.0, {})
    t0 = time.monotonic()
    await asyncio.sleep(args.seconds)
    count, elapsed = len(done) - start, time.monotonic() - t0
    cpu1 = [cpu_s(p.pid) for p in cluster.procs]
    redis1 = redis_stats(args.redis) if stats else (0.0, {})
    stop.set()
    await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    per = max(count, 1)
    result = {
        "rps": count / elapsed,
        "errors": len(errors) - errors_before,
        "cpu_us": 1e6 * (sum(cpu1) - sum(cpu0)) / per,
    }
    if stats:
        result["redis_cpu_us"] = 1e6 * (redis1[0] - redis0[0]) / per
        calls = {k: (v - redis0[1].get(k, 0)) / per for k, v in redis1[1].items()}
        result["redis_calls"] = {k: round(v, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v >= 0.01}
    return result


# ---------------------------------------------------------------- fan-out


class FanOut:
    """``--subscribers`` subscriptions to one topic, with callbacks on servers in this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sink = Sink(args.subscribers)
        self.topic = f"https://example.com/scale/{uuid.uuid4().hex[:8]}"
        self.servers: list[asyncio.AbstractServer] = []
        self.bases: list[str] = []

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.args.callback_ports):
            server = await loop.create_server(lambda: CallbackServer(self.sink), "127.0.0.1", 0, backlog=4096)
            self.servers.append(server)
            self.bases.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        sem = asyncio.Semaphore(32)

        async def sub(i: int) -> None:
            async with sem:
                form = {"hub.mode": "subscribe", "hub.topic": self.topic}
                form["hub.callback"] = f"{self.bases[i % len(self.bases)]}/cb/{i}"
                c = Conn("127.0.0.1", port)
                st, _, _ = await c.request("POST", "/hub", urllib.parse.urlencode(form).encode(), FORM)
                c.close()
                if st != 202:
                    raise RuntimeError(f"subscribe answered {st}")

        await asyncio.gather(*(sub(i) for i in range(self.args.subscribers)))
        await asyncio.wait_for(self.sink.all_verified.wait(), 120)
        await asyncio.sleep(1.0)  # the last activations are being committed

    async def round(self, port: int) -> float:
        self.sink.got = {}
        self.sink.done = asyncio.Event()
        self.sink.body = b"update %d" % time.time_ns()
        c = Conn("127.0.0.1", port)
        t0 = time.monotonic()
        target = "/publish?" + urllib.parse.urlencode({"hub.topic": self.topic})
        st, _, _ = await c.request("POST", target, self.sink.body, {"Content-Type": "text/plain"})
        c.close()
        if not 200 <= st < 300:
            raise RuntimeError(f"publish answered {st}")
        await asyncio.wait_for(self.sink.done.wait(), self.args.round_timeout)
        return max(self.sink.got.values()) - t0


# ---------------------------------------------------------------- idle pollers


async def idle_pollers(cluster: Cluster, args: argparse.Namespace) -> dict[str, float]:
    n = len(cluster.ports)
    per_name = 100
    names = [f"idle{k}" for k in range((args.idle + per_name - 1) // per_name)]
    urls = await asyncio.gather(*(register(cluster.ports[0], name) for name in names))
    writers: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(200)
    rss_before = [rss_mb(p.pid) for p in cluster.procs]
    t0 = time.monotonic()

    async def hold(i: int) -> None:
        async with sem:
            port = cluster.ports[i % n]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            target = target_of(urls[i % len(urls)]["first"])
            writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            await writer.drain()
            writers.append(writer)

    await asyncio.gather(*(hold(i) for i in range(args.idle)))
    parked = 0.0
    while time.monotonic() - t0 < 120:
        parked = sum([await metric(port, "relay_pollers_waiting") for port in cluster.ports])
        if parked >= args.idle:
            break
        await asyncio.sleep(0.2)
    t_parked = time.monotonic() - t0
    # Relayed requests to another name while the idle ones wait.
    live = await register(cluster.ports[0], "busy")
    stop = asyncio.Event()
    task = asyncio.ensure_future(poller(cluster.ports[0], live["first"], stop))
    await asyncio.sleep(0.3)
    conn = Conn("127.0.0.1", cluster.ports[-1])
    latencies = []
    for k in range(200):
        t = time.monotonic()
        st, _, _ = await conn.request("GET", target_of(live["related"]) + f"x{k}")
        if st == 200:
            latencies.append(time.monotonic() - t)
    stop.set()
    task.cancel()
    rss = [rss_mb(p.pid) for p in cluster.procs]
    for w in writers:
        w.close()
    latencies.sort()
    return {
        "idle": args.idle,
        "parked": parked,
        "park_s": t_parked,
        "rss_mb": rss,
        "rss_before_mb": rss_before,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "ok": len(latencies),
    }


# ---------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 sockets here, and in the children
    tmp = tempfile.mkdtemp(prefix="scale-")
    counts = [int(x) for x in args.processes.split(",")]
    print(f"machine: {os.cpu_count()} cores; logs in {tmp}", flush=True)
    results: dict[int, dict[str, float]] = {}
    for n in counts:
        # Each size on its own database and key prefix: nothing one run left behind slows the next.
        database = await scratch_database(args.postgres)
        sep = "&" if "?" in args.redis else "?"
        redis = f"{args.redis}{sep}prefix=bench-scale-{uuid.uuid4().hex[:8]}:"
        last = n == counts[-1] and args.idle > 0
        cluster = Cluster(n, database, redis, tmp, poll_timeout=60 if last else 20)
        fan = FanOut(args)
        try:
            await cluster.ready()
            rps = await relayed_rps(cluster, args, tag=str(n))
            await fan.start(cluster.ports[0])
            spans = [await fan.round(cluster.ports[0]) for _ in range(args.rounds)]
            metric_name = 'hub_deliveries_total{outcome="delivered"}'
            shares = [round(await metric(port, metric_name)) for port in cluster.ports]
            results[n] = {**rps, "fanout_s": statistics.median(spans)}
            print(
                f"{n} process(es): relayed {rps['rps']:.0f} req/s ({rps['errors']:.0f} errors), "
                f"server CPU {rps['cpu_us']:.0f} us per request; "
                f"fan-out to {args.subscribers}: {results[n]['fanout_s']:.2f} s "
                f"(rounds {', '.join(f'{s:.2f}' for s in spans)}; delivered per process {shares})",
                flush=True,
            )
            if "redis_calls" in rps:
                print(f"  redis: CPU {rps['redis_cpu_us']:.0f} us, calls per request {rps['redis_calls']}", flush=True)
            if last:
                idle = await idle_pollers(cluster, args)
                print(
                    f"{idle['idle']} idle pollers over {n} process(es): all parked in {idle['park_s']:.1f} s "
                    f"(parked {idle['parked']:.0f}); RSS MB per process {[round(r) for r in idle['rss_before_mb']]} "
                    f"-> {[round(r) for r in idle['rss_mb']]}; "
                    f"meanwhile relayed requests p50 {idle['p50_ms']:.1f} ms, p99 {idle['p99_ms']:.1f} ms "
                    f"({idle['ok']}/200 ok)",
                    flush=True,
                )
        finally:
            cluster.stop()
            for server in fan.servers:
                server.close()
            await drop_database(database)
    if args.memory_baseline:
        database = await scratch_database(args.postgres)
        cluster = Cluster(1, database, None, tmp, poll_timeout=20)
        try:
            await cluster.ready()
            memory = await relayed_rps(cluster, args, tag="m")
        finally:
            cluster.stop()
            await drop_database(database)
        print(
            f"1 process, in-process broker: relayed {memory['rps']:.0f} req/s ({memory['errors']:.0f} errors), "
            f"server CPU {memory['cpu_us']:.0f} us per request",
            flush=True,
        )
        for n in counts:
            r = results[n]
            print(
                f"  Redis broker, {n} process(es): rate per process / in-process rate "
                f"x{r['rps'] / n / memory['rps']:.2f}; in-process CPU per request / Redis's "
                f"x{memory['cpu_us'] / r['cpu_us']:.2f}"
            )
    base = counts[0]
    print(f"\nscaling ratio (vs {base} process):")
    for n in counts:
        r = results[n]
        print(
            f"  {n}: relayed rps x{r['rps'] / results[base]['rps']:.2f}, "
            f"fan-out speed x{results[base]['fanout_s'] / r['fanout_s']:.2f}, "
            f"server CPU per relayed request x{r['cpu_us'] / results[base]['cpu_us']:.2f}"
        )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per relayed-rps run")
    p.add_argument("--names", type=int, default=8)
    p.add_argument("--pollers", type=int, default=32)
    p.add_argument("--requesters", type=int, default=64)
    p.add_argument("--subscribers", type=int, default=2000)
    p.add_argument("--callback-ports", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-timeout", type=float, default=120)
    p.add_argument("--idle", type=int, default=10_000)
    p.add_argument("--memory-baseline", action="store_true", help="also run one process on the in-process broker")
    p.add_argument("--redis-stats", action="store_true", help="Redis CPU and commands per request (own Redis only)")
    p.add_argument(
        "--postgres",
        default=os.environ.get("REVERSEHUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    p.add_argument("--redis", default=os.environ.get("REVERSEHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
