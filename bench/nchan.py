#!/usr/bin/env python3
"""Side by side: nginx with nchan (C, long-poll, unacknowledged) and reversehub's relay fan-out.

    .venv/bin/python bench/nchan.py                                   # N = 1,000 and 10,000
    .venv/bin/python bench/nchan.py --rounds 3 --setup-timeout 1500 1000 10000
    .venv/bin/python bench/nchan.py --polls 10000                     # memory per waiting long-poll only

Needs nginx and Debian's nchan module (``apt-get install -y nginx-light libnginx-mod-nchan`` on
Debian bookworm; the bench says so when they are missing). It starts its own nginx, with its own
configuration in a temporary directory on a free port, one worker process (as ``reversehub serve``
is one process), and never touches a system nginx.

For every N, in one run:
  nchan      N long-poll subscribers on one channel (``nchan_subscriber longpoll``), one publish
             (``POST /pub/CHANNEL``); each subscriber polls again with the message's
             Last-Modified/Etag, as nchan's long-poll clients do. No acknowledgement, no
             durability: a message reaches whoever is waiting, from shared memory.
  reversehub bench/fanout.py's relay mode: N subscribers, each on its own relay name, subscribed
             with its public URL as callback, one fat ping; each delivery is durable (the outbox)
             and acknowledged (the subscriber's reply ends it), signed when a secret is given.
Both print bench/fanout.py's columns (publish → last receive, deliveries/s, server CPU per delivery,
the server's peak RSS), then a summary with the ratios. The server's CPU is nginx's (master and
worker) or the ``serve`` process's; the bench's own clients share the same two cores.

Memory per waiting long-poll: nginx's resident set (master and worker) before and with N polls
waiting on one channel, divided by N, and reversehub's from bench/idle_pollers.py (N polls held on
one relay name), both measured in this run. Kernel socket buffers count for neither.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fanout import Conn, Sink, free_port, median, publish_round, report, run_one  # noqa: E402
from idle_pollers import measure as reversehub_per_poll  # noqa: E402
from memory import Server, session_pids  # noqa: E402

NGINX = "/usr/sbin/nginx"
MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
INSTALL = "apt-get install -y nginx-light libnginx-mod-nchan   # Debian bookworm (12)"
CHANNEL = "fanout"
CONFIG = """\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    nchan_shared_memory_size 256m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        keepalive_timeout 3600s;
        location = /healthz {{ return 200 "ok\\n"; }}
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber longpoll;
            nchan_channel_id $1;
            nchan_subscriber_timeout 3600s;
        }}
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 1;
            nchan_message_timeout 600s;
        }}
    }}
}}
"""


def missing() -> str | None:
    if not os.path.exists(NGINX) or not os.path.exists(MODULE):
        return f"nginx with nchan is not installed ({NGINX}, {MODULE}); install it with:\n    {INSTALL}"
    return None


def session_kib(sid: int, field: str) -> int:
    """``field`` (VmRSS or VmHWM) in KiB, summed over the processes of session ``sid``."""
    total = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass  # gone meanwhile
    return total


def session_cpu(sid: int) -> float:
    """CPU seconds of the session's processes, from /proc/PID/schedstat (nanoseconds: nchan's
    whole fan-out can take less than one clock tick of /proc/PID/stat)."""
    total = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # gone meanwhile
    return total / 1e9


class Nginx(Server):
    """nginx with nchan, in its own session, configuration and temporary directory; stopped on exit."""

    def __init__(self, workdir: str) -> None:
        port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="nchan-", dir=workdir)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(module=MODULE, tmp=self.tmp, port=port, nofile=nofile, connections=nofile - 64))
        super().__init__([NGINX, "-p", self.tmp, "-c", conf, "-e", "stderr"], port, self.tmp)

    async def subscribers(self) -> int:
        conn = Conn("127.0.0.1", self.port)
        try:
            status, _, body = await conn.request("GET", f"/pub/{CHANNEL}", headers={"Accept": "text/json"})
        finally:
            conn.close()
        return int(json.loads(body)["subscribers"]) if status == 200 else 0


async def nchan_subscriber(i: int, port: int, sink: Sink, gate: asyncio.Semaphore, stop: asyncio.Event) -> None:
    """One long-poll subscriber: wait, take the message, poll again for the one after it."""
    conn = Conn("127.0.0.1", port)
    headers: dict[str, str] = {}
    async with gate:  # connect in bounded waves: the listen backlog is finite
        conn.reader, conn.writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    while not stop.is_set():
        status, hdrs, body = await conn.request("GET", f"/sub/{CHANNEL}", headers=headers)
        if status == 200:
            sink.deliver(str(i), body)
            headers = {"If-Modified-Since": hdrs["last-modified"][0], "If-None-Match": hdrs["etag"][0]}
        elif status not in (304, 408):
            raise RuntimeError(f"nchan subscriber got {status}")


async def until(what: str, check: Callable[[], Awaitable[int]], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := await check()) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {got} of {n} {what}")
        await asyncio.sleep(0.2)


async def nchan_run(n: int, args: argparse.Namespace, workdir: str) -> tuple[list[dict[str, float]], float]:
    """``args.rounds`` publishes to ``n`` waiting subscribers; also the KiB of nginx's RSS per waiting poll."""
    async with Nginx(workdir) as nginx:
        sid = nginx.proc.pid
        await asyncio.sleep(0.5)
        before = session_kib(sid, "VmRSS")
        sink, stop = Sink(n), asyncio.Event()
        gate = asyncio.Semaphore(64)
        t_sub = time.monotonic()
        tasks = [asyncio.ensure_future(nchan_subscriber(i, nginx.port, sink, gate, stop)) for i in range(n)]
        try:
            await until("subscribers waiting", nginx.subscribers, n, args.setup_timeout)
            setup_s = time.monotonic() - t_sub
            await asyncio.sleep(1.0)
            per_poll = (session_kib(sid, "VmRSS") - before) / n
            results = []
            for r in range(args.rounds):
                if r:
                    await asyncio.sleep(1.0)
                    await until("subscribers waiting again", nginx.subscribers, n, args.round_timeout)
                results.append(
                    await publish_round(
                        n,
                        sid,
                        nginx.port,
                        "",
                        sink,
                        args,
                        target=f"/pub/{CHANNEL}",
                        cpu=lambda: session_cpu(sid),
                        peak_rss_mb=lambda: session_kib(sid, "VmHWM") / 1024,
                    )
                )
                results[-1]["setup_s"] = setup_s
            stop.set()
            return results, per_poll
        finally:
            for task in tasks:
                task.cancel()


def fanout_args(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace bench/fanout.py's run_one reads, for its relay mode on ``reversehub serve``."""
    return argparse.Namespace(
        callbacks="relay",
        in_process=False,
        profile=None,
        pause=0.0,
        per_host=0,
        poll_timeout=args.poll_timeout,
        setup_timeout=args.setup_timeout,
        round_timeout=args.round_timeout,
        rounds=args.rounds,
        ptth_share=0.0,  # every subscriber long-polls, as nchan's do
    )


def polls_only(args: argparse.Namespace) -> None:
    """Memory per waiting long-poll, nchan's and reversehub's, ``args.polls`` each."""

    async def nchan() -> float:
        with tempfile.TemporaryDirectory(prefix="nchan-bench-") as workdir:
            async with Nginx(workdir) as nginx:
                await asyncio.sleep(0.5)
                before = session_kib(nginx.proc.pid, "VmRSS")
                sink, stop, gate = Sink(args.polls), asyncio.Event(), asyncio.Semaphore(64)
                tasks = [
                    asyncio.ensure_future(nchan_subscriber(i, nginx.port, sink, gate, stop)) for i in range(args.polls)
                ]
                try:
                    await until("subscribers waiting", nginx.subscribers, args.polls, args.setup_timeout)
                    await asyncio.sleep(1.0)
                    return (session_kib(nginx.proc.pid, "VmRSS") - before) / args.polls
                finally:
                    for task in tasks:
                        task.cancel()

    theirs = asyncio.run(nchan())
    ours = reversehub_per_poll(args.polls)["per_poll_kib"]
    print("| server | waiting long-polls | KiB of server RSS per waiting poll |\n|---|---|---|")
    print(f"| nginx + nchan (one worker) | {args.polls:,} | {theirs:.1f} |")
    print(f"| reversehub serve | {args.polls:,} | {ours:.1f} |")
    print(f"# reversehub/nchan per waiting poll: {ours / theirs:.1f}x", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, nargs="*", default=[1000, 10000], help="numbers of subscribers [1000 10000]")
    p.add_argument("--rounds", type=int, default=3, help="publishes per setup (the median is compared)")
    p.add_argument("--poll-timeout", type=float, default=60.0, help="reversehub's --poll-timeout")
    p.add_argument("--setup-timeout", type=float, default=1500.0)
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--polls", type=int, default=0, help="only memory per waiting long-poll, with this many polls")
    args = p.parse_args()
    if problem := missing():
        print(problem, file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # nginx inherits it
    if max([*args.n, args.polls]) + 200 > hard:
        p.error(f"RLIMIT_NOFILE hard limit {hard} is too low for {max([*args.n, args.polls])} connections")
    if args.polls:
        polls_only(args)
        return 0
    print(
        "| server | N | round | publish ack ms | first delivered ms | half delivered s | all delivered s "
        "| deliveries/s | server CPU s | server CPU us/delivery | bench CPU s | server peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    with tempfile.TemporaryDirectory(prefix="nchan-bench-") as workdir:
        for n in args.n:
            theirs, per_poll = asyncio.run(nchan_run(n, args, workdir))
            report("nginx + nchan", n, theirs)
            try:
                ours = asyncio.run(run_one(n, fanout_args(args)))
            except TimeoutError as exc:  # a setup that did not finish: nchan's figures still stand
                print(f"# reversehub relay N={n}: not measured ({exc})", flush=True)
                continue
            report("reversehub relay", n, ours)
            summary.append((n, theirs, ours, per_poll))
    print(
        "\n| N | nchan all delivered s | reversehub all delivered s | time ratio | nchan deliveries/s "
        "| reversehub deliveries/s | nchan CPU us/delivery | reversehub CPU us/delivery | CPU ratio "
        "| nchan peak RSS MB | reversehub peak RSS MB | nchan KiB per waiting poll |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, theirs, ours, per_poll in summary:
        t_n, t_r = median(theirs, "all_delivered_s"), median(ours, "all_delivered_s")
        c_n, c_r = median(theirs, "hub_cpu_s") * 1e6 / n, median(ours, "hub_cpu_s") * 1e6 / n
        print(
            f"| {n:,} | {t_n:.4f} | {t_r:.3f} | {t_r / t_n:.0f}x | {n / t_n:,.0f} | {n / t_r:,.0f} "
            f"| {c_n:.1f} | {c_r:.0f} | {c_r / max(c_n, 0.01):.0f}x "
            f"| {median(theirs, 'hub_peak_rss_mb'):.0f} | {median(ours, 'hub_peak_rss_mb'):.0f} | {per_poll:.1f} |",
            flush=True,
        )
    print("# medians of the rounds; reversehub's deliveries are durable and acknowledged, nchan's neither")
    return 0


if __name__ == "__main__":
    sys.exit(main())
