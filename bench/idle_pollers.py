"""Resident memory per waiting poll: N held polls on one ``reversehub serve`` process.

    .venv/bin/python bench/idle_pollers.py [--polls 10000]

The server runs in its own process (embedded SQLite, in-process broker, a long poll timeout);
another process opens ``--polls`` connections with raw asyncio sockets and sends one GET each on a
request URL. Once the server's /metrics shows them all waiting, the growth of its resident set size
divided by the number of polls is printed. Both processes raise RLIMIT_NOFILE to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlencode, urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def waiting(origin: str) -> int:
    text = urllib.request.urlopen(origin + "/metrics", timeout=10).read().decode()
    m = re.search(r"^relay_pollers_waiting (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


async def hold(url: str, n: int) -> None:
    target = urlsplit(url)
    request = f"GET {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n\r\n".encode()
    writers = []
    for i in range(n):
        for attempt in range(50):
            try:
                reader, writer = await asyncio.open_connection(target.hostname, target.port)
                break
            except OSError:
                await asyncio.sleep(0.05 * (attempt + 1))  # listen backlog full: let the server accept
        else:
            raise SystemExit(f"could not open connection {i}")
        writer.write(request)
        writers.append((reader, writer))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    print("held", flush=True)
    await asyncio.sleep(3600)


def measure(polls: int) -> dict[str, float]:
    """Start a server, hold ``polls`` polls on it; its RSS before and after (KiB) and per poll."""
    port = 18000 + os.getpid() % 1000
    origin = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "reversehub"), "serve", "--port", str(port),
             "--public-url", origin, "--database-url", f"sqlite:///{tmp}/idle.db", "--log-level", "warning",
             "--poll-timeout", "3600"],
            cwd=ROOT,
        )  # fmt: skip
        holder = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(origin + "/healthz", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            data = urlencode({"name": "idle", "token": "t"}).encode()
            with urllib.request.urlopen(urllib.request.Request(origin + "/reversehttp", data=data)) as r:
                first = re.search(r'<([^>]+)>; rel="first"', ", ".join(r.headers.get_all("Link"))).group(1)
            # Warm up the code paths (imports, caches) before taking the baseline.
            for _ in range(20):
                urllib.request.urlopen(origin + "/metrics").read()
            time.sleep(1)
            before = rss_kib(server.pid)
            start = time.monotonic()
            holder = subprocess.Popen([sys.executable, __file__, "--hold", first, "--polls", str(polls)])
            while (n := waiting(origin)) < polls:
                if time.monotonic() - start > 300:
                    raise SystemExit(f"only {n} polls waiting after 300 s")
                time.sleep(0.5)
            time.sleep(1)
            after = rss_kib(server.pid)
            return {
                "before_kib": before,
                "after_kib": after,
                "seconds": time.monotonic() - start,
                "per_poll_kib": (after - before) / polls,
            }
        finally:
            if holder is not None:
                holder.kill()
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--polls", type=int, default=10_000)
    parser.add_argument("--hold")
    args = parser.parse_args()
    limit = raise_fd_limit()
    if args.hold:
        asyncio.run(hold(args.hold, args.polls))
        return
    if args.polls + 100 > limit:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {limit} is too low for {args.polls} polls")
    m = measure(args.polls)
    print(f"{args.polls} waiting polls in {m['seconds']:.1f} s")
    print(f"server RSS {m['before_kib'] / 1024:.1f} MiB -> {m['after_kib'] / 1024:.1f} MiB")
    print(f"resident memory per waiting poll: {m['per_poll_kib']:.1f} KiB (target <= 10 KiB)")


if __name__ == "__main__":
    main()
