"""Relayed versus bare requests per second, on one machine, in one run.

    .venv/bin/python bench/relay_throughput.py [--seconds 5] [--concurrency 64] [--pollers 16] [--rounds 3] [--pipeline]
    .venv/bin/python bench/relay_throughput.py --ptth [--pollers 4]

1. bare: a one-route Starlette "hello" app under uvicorn (httptools, uvloop), loaded by
   ``--concurrency`` keep-alive connections;
2. relayed: ``reversehub serve`` (embedded SQLite, in-process broker, --log-level warning), one
   registered name, ``--pollers`` pollers answering "hello" at once, and the same load on its public URL.

Servers, the load generator and the pollers are separate processes; the load and the pollers speak
raw HTTP/1.1 over asyncio sockets (uvloop) so that they cost the server's core as little as possible.
A relayed request is three HTTP exchanges on the server (request, poll, reply), so relayed/bare
cannot pass about 0.33 on one server process. ``--pipeline`` lets pollers ask for application/http.
``--redis-url redis://...?prefix=x:`` runs the relayed server on the Redis broker (issue 18 compares
its CPU per relayed request with the in-process broker's).

It also prints each server's CPU time per request (Linux /proc), which moves far less than the rates
when other work shares the machine. The bare server is vanilla uvicorn, which writes each response as
two ``send()`` calls (head, body); ``reversehub serve`` sends a response in one (reversehub.server.protocol),
so a relayed request costs the server three writes, one per exchange. A pipeline (application/http)
carries up to ``Settings.max_pipeline`` (32) requests in one poll and one reply, so per relayed
request the server handles little more than the requester's own exchange.

``--ptth``: the name is served by ``--pollers`` PTTH connections (draft-kazuho-ptth-ptth-00 handshake
on the request URL, docs/ptth.md) instead of pollers: a raw-socket backend answers "hello" to each
request written on them (the load's requests have no body, so it answers one response per request
head it reads, in order, pipelined or not). A relayed request is then one HTTP exchange on the server
plus a write and a read on a connection that stays open.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlencode, urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not come up")


# Raw HTTP/1.1 over asyncio streams ------------------------------------------------------------------
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = _LENGTH.search(head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, head, body


async def load(host: str, port: int, path: str, concurrency: int, seconds: float, warmup: float) -> None:
    counts = {"ok": 0, "other": 0}
    start = time.monotonic()
    measure_from, measure_to = start + warmup, start + warmup + seconds
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            writer.write(request)
            status, _, _ = await read_response(reader)
            now = time.monotonic()
            if now > measure_to:
                break
            if now >= measure_from:
                counts["ok" if status == 200 else "other"] += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(concurrency)))
    print(f"{counts['ok'] / seconds:.0f} {counts['other']}", flush=True)


async def pollers(first: str, n: int, pipeline: bool) -> None:
    from relay.wire import parse_requests

    target = urlsplit(first)
    link = re.compile(rb'<([^>]+)>; rel="next"', re.I)
    accept = b"application/http" if pipeline else b"message/http"
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

    async def poller(url: str) -> None:
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        host = f"{target.hostname}:{target.port}".encode()
        while True:
            path = urlsplit(url).path.encode()
            writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n\r\n" % (path, host, accept))
            status, head, body = await read_response(reader)
            m = link.search(head)
            if status == 204:
                continue
            if status != 200 or not m:
                print("poller got", status, file=sys.stderr)
                return
            count = len(parse_requests(body)) if pipeline else 1
            payload = reply * count
            ctype = accept
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (path, host, ctype, len(payload), payload)
            )
            await read_response(reader)
            url = m.group(1).decode()

    # Every poller needs its own chain of request URLs: a refresh of the registration gives one each.
    urls = [first] + [register(first_gateway(first), "bench") for _ in range(n - 1)]
    await asyncio.gather(*(poller(u) for u in urls))


async def ptth_backends(first: str, n: int) -> None:
    """``n`` PTTH connections on request URL ``first``, each answering "hello" to every request."""
    target = urlsplit(first)
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

    async def backend() -> None:
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: http%%2F1.1\r\n\r\n"
            % (target.path.encode(), target.hostname.encode(), target.port)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            print("PTTH handshake got", head[:12], file=sys.stderr)
            return
        pending = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            pending += data
            count = pending.count(b"\r\n\r\n")
            if count:
                pending = pending[pending.rindex(b"\r\n\r\n") + 4 :]
                writer.write(reply * count)

    await asyncio.gather(*(backend() for _ in range(n)))


def first_gateway(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/reversehttp"


def register(gateway: str, name: str) -> str:
    data = urlencode({"name": name, "token": "bench", "lease": "3600"}).encode()
    with urllib.request.urlopen(urllib.request.Request(gateway, data=data)) as r:
        found = dict(
            (rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', ", ".join(r.headers.get_all("Link")))
        )
    return found["first"]


# Servers ---------------------------------------------------------------------------------------------
def serve_bare(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools", loop="uvloop"
    )


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, *args], cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(port: int, path: str, args: argparse.Namespace, server: int) -> tuple[float, int, float]:
    """(rps, non-200 count, the server's CPU µs per request over the whole load, warm-up included)."""
    cpu = cpu_seconds(server)
    proc = spawn(
        __file__,
        "--load",
        f"127.0.0.1:{port}{path}",
        "--concurrency",
        str(args.concurrency),
        "--seconds",
        str(args.seconds),
    )
    out, _ = proc.communicate()
    cpu = cpu_seconds(server) - cpu
    rps, other = out.split()
    requests = float(rps) * (args.seconds + args.warmup)
    return float(rps), int(other), cpu / requests * 1e6 if requests else 0.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pollers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--ptth", action="store_true", help="serve the name by --pollers PTTH connections")
    parser.add_argument("--ptth-for")
    parser.add_argument("--redis-url", help="relay through the Redis broker (a key prefix of its own per run)")
    parser.add_argument("--serve-bare", type=int)
    parser.add_argument("--load")
    parser.add_argument("--pollers-for")
    args = parser.parse_args()

    if args.serve_bare:
        return serve_bare(args.serve_bare)
    if args.load:
        import uvloop

        hostport, _, path = args.load.partition("/")
        host, _, port = hostport.partition(":")
        return uvloop.run(load(host, int(port), "/" + path, args.concurrency, args.seconds, args.warmup))
    if args.pollers_for:
        import uvloop

        return uvloop.run(pollers(args.pollers_for, args.pollers, args.pipeline))
    if args.ptth_for:
        import uvloop

        return uvloop.run(ptth_backends(args.ptth_for, args.pollers))

    bare_port, port = free_port(), free_port()
    origin = f"http://127.0.0.1:{port}"
    bare_runs: list[float] = []
    relayed_runs: list[float] = []
    bare_cpu: list[float] = []
    relayed_cpu: list[float] = []
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        bare = spawn(__file__, "--serve-bare", str(bare_port))
        server = subprocess.Popen(
            [os.path.join(os.path.dirname(PY), "reversehub"), "serve", "--port", str(port), "--public-url", origin,
             "--database-url", f"sqlite:///{tmp}/bench.db", "--log-level", "warning", "--reply-timeout", "60",
             *(["--redis-url", args.redis_url] if args.redis_url else [])],
            cwd=ROOT,
        )  # fmt: skip
        poll = None
        try:
            wait_up(f"http://127.0.0.1:{bare_port}/")
            wait_up(origin + "/healthz")
            first = register(origin + "/reversehttp", "bench")
            if args.ptth:
                poll = spawn(__file__, "--ptth-for", first, "--pollers", str(args.pollers))
            else:
                poll_args = ["--pollers-for", first, "--pollers", str(args.pollers)]
                poll = spawn(__file__, *poll_args, *(["--pipeline"] if args.pipeline else []))
            # Alternate the two loads and keep each one's best round: other work on the machine
            # moves single figures a lot, and it hits both sides alike this way.
            for _ in range(args.rounds):
                rps, _, cpu = run_load(bare_port, "/", args, bare.pid)
                bare_runs.append(rps)
                bare_cpu.append(cpu)
                rps, other, cpu = run_load(port, "/relay/bench/", args, server.pid)
                relayed_runs.append(rps)
                relayed_cpu.append(cpu)
                failed += other
        finally:
            if poll is not None:
                poll.kill()
            stop(server)
            stop(bare)
    bare_rps, relayed_rps = max(bare_runs), max(relayed_runs)
    mode = "application/http pipelines" if args.pipeline else "message/http"
    who = f"{args.pollers} PTTH connections" if args.ptth else f"{args.pollers} pollers, {mode}"
    print(f"bare:    {bare_rps:8.0f} rps  (concurrency {args.concurrency}, {args.seconds:g} s, rounds {bare_runs})")
    print(f"relayed: {relayed_rps:8.0f} rps  ({who}, rounds {relayed_runs}, {failed} non-200)")
    median = statistics.median(relayed_runs) / statistics.median(bare_runs)
    print(f"relayed/bare = {relayed_rps / bare_rps:.3f} (best rounds; {median:.3f} from the medians)")
    # Server CPU per request (approximate: the load's requests over its warm-up and measured time).
    bare_us, relayed_us = min(bare_cpu), min(relayed_cpu)
    if bare_us:
        print(f"server CPU per request: bare {bare_us:.0f} µs, relayed {relayed_us:.0f} µs (best rounds)")


if __name__ == "__main__":
    main()
