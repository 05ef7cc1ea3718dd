"""Publish-to-callback latency: through the relay with clients.AsyncSubscriber, against a plain HTTP callback.

    python bench/subscriber_latency.py [--count 300] [--warmup 20]

Starts ``reversehub serve`` (a subprocess, temporary SQLite database) and, in this process, two
subscribers to two topics: an ``AsyncSubscriber`` whose callback is a relay name it long-polls, and a
plain HTTP server subscribed directly (the hub POSTs to it). Each round publishes (fat ping) and
waits for the callback before the next, so the figures are one message's latency, not throughput.
Prints median and p99 for both paths and their ratio (target: relay under 2x the direct path), and the
publish's own time to its 2xx (the payload and its deliveries are committed before it): issue 18's
target is a median of at most 2 ms and a p99 of at most 10 ms from publish to callback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from clients import AsyncSubscriber, Update


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Arrivals:
    """Maps a published sequence number to the moment its callback ran."""

    def __init__(self) -> None:
        self.events: dict[int, asyncio.Event] = {}
        self.times: dict[int, float] = {}

    def expect(self, n: int) -> asyncio.Event:
        self.events[n] = asyncio.Event()
        return self.events[n]

    def arrived(self, body: bytes) -> None:
        n = int(body)
        self.times.setdefault(n, time.perf_counter())
        if n in self.events:
            self.events[n].set()


def direct_app(arrivals: Arrivals) -> Starlette:
    async def callback(request: Request) -> Response:
        if request.method == "GET":  # intent verification: echo the challenge
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        arrivals.arrived(await request.body())
        return Response(status_code=204)

    return Starlette(routes=[Route("/callback", callback, methods=["GET", "POST"])])


async def measure(
    http: httpx.AsyncClient, base: str, topic: str, arrivals: Arrivals, count: int, seq: int
) -> list[tuple[float, float]]:
    """(publish to callback, publish to its 2xx) in ms, for ``count`` sequential publishes."""
    latencies = []
    for n in range(seq, seq + count):
        arrived = arrivals.expect(n)
        started = time.perf_counter()
        r = await http.post(
            f"{base}/publish",
            params={"hub.topic": topic},
            content=str(n).encode(),
            headers={"content-type": "text/plain"},
        )
        acked = time.perf_counter()
        r.raise_for_status()
        await asyncio.wait_for(arrived.wait(), 30)
        latencies.append(((arrivals.times[n] - started) * 1000, (acked - started) * 1000))
    return latencies


async def wait_healthy(http: httpx.AsyncClient, base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("reversehub serve exited early")
        try:
            if (await http.get(f"{base}/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("reversehub serve did not become healthy")


async def main(count: int, warmup: int) -> None:
    port, direct_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "REVERSEHUB_PORT": str(port),
            "REVERSEHUB_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "REVERSEHUB_ALLOW_PRIVATE_NETWORKS": "1",
            "REVERSEHUB_LOG_LEVEL": "warning",
        }
        exe = Path(sys.executable).parent / "reversehub"
        server = subprocess.Popen([str(exe), "serve"], env=env)
        direct = uvicorn.Server(
            uvicorn.Config(
                direct_app(direct_arrivals := Arrivals()),
                host="127.0.0.1",
                port=direct_port,
                log_level="warning",
                access_log=False,
            )
        )
        direct_task = asyncio.create_task(direct.serve())
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                await wait_healthy(http, base, server)
                direct_topic, relay_topic = f"{base}/topics/bench-direct", f"{base}/topics/bench-relay"
                r = await http.post(
                    f"{base}/hub",
                    data={
                        "hub.mode": "subscribe",
                        "hub.topic": direct_topic,
                        "hub.callback": f"http://127.0.0.1:{direct_port}/callback",
                    },
                )
                r.raise_for_status()
                relay_arrivals = Arrivals()

                async def on_update(update: Update) -> None:
                    relay_arrivals.arrived(update.body)

                async with AsyncSubscriber(relay_topic, on_update, hub=f"{base}/hub"):
                    # The direct subscription's verification is asynchronous: a first publish that
                    # arrives proves it is active.
                    await measure(http, base, direct_topic, direct_arrivals, 1, 0)
                    results: dict[str, list[tuple[float, float]]] = {"direct": [], "relay": []}
                    seq = 1
                    for topic, arrivals in ((direct_topic, direct_arrivals), (relay_topic, relay_arrivals)):
                        await measure(http, base, topic, arrivals, warmup, seq)
                        seq += warmup
                    # Interleave the two paths in blocks so drift (GC, disk) hits both alike.
                    block = max(1, count // 10)
                    for _ in range(0, count, block):
                        for name, topic, arrivals in (
                            ("direct", direct_topic, direct_arrivals),
                            ("relay", relay_topic, relay_arrivals),
                        ):
                            results[name] += await measure(http, base, topic, arrivals, block, seq)
                            seq += block
        finally:
            direct.should_exit = True
            await direct_task
            server.terminate()
            server.wait(10)

    d, r = ([x[0] for x in results[k]] for k in ("direct", "relay"))
    print(f"publish-to-callback latency, {len(d)} sequential publishes per path (ms)")
    print(f"{'path':<8}{'median':>10}{'p99':>10}{'mean':>10}{'2xx median':>12}{'2xx p99':>10}")
    for name, values in (("direct", d), ("relay", r)):
        acks = [x[1] for x in results[name]]
        print(
            f"{name:<8}{statistics.median(values):>10.2f}{percentile(values, 0.99):>10.2f}"
            f"{statistics.fmean(values):>10.2f}{statistics.median(acks):>12.2f}{percentile(acks, 0.99):>10.2f}"
        )
    for name, values in (("direct", d), ("relay", r)):
        print(
            f"target {name}: median {statistics.median(values):.2f} ms (<= 2), p99 {percentile(values, 0.99):.2f} ms "
            f"(<= 10): {'met' if statistics.median(values) <= 2 and percentile(values, 0.99) <= 10 else 'not met'}"
        )
    print(
        f"ratio relay/direct: median {statistics.median(r) / statistics.median(d):.2f}x, "
        f"p99 {percentile(r, 0.99) / percentile(d, 0.99):.2f}x (target < 2x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="measured publishes per path")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured publishes per path first")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.warmup))
