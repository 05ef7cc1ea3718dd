"""CPU and function calls per relayed request, in one process, with no sockets.

    .venv/bin/python bench/relay_cpu.py [--requests 5000] [--rounds 3] [--pipeline | --ptth] [--calls [--top N]]
                                        [--concurrency 64] [--pollers 16]

The real app (``create_app``, embedded SQLite, in-process broker) under the real listener
(``config_for``: reversehub.server.protocol's protocol, uvicorn's proxy-headers layer), but each
connection's transport is an object in this process: requesters send ``GET /relay/bench/``, pollers
poll and answer "hello" as bench/relay_throughput.py's do, and nothing crosses the kernel. With
``--ptth`` the pollers upgrade their request URL to PTTH connections instead (bench/relay_throughput.py
``--ptth``'s backends: "hello" to every request, all those of one write answered in one).

It prints the process's CPU time per relayed request for each round (the server's Python work plus
this script's small load; no system calls, so it says nothing about the kernel's share) and, with
``--calls``, the Python function calls per relayed request counted by cProfile over one more round.
On a machine shared with other work the call count does not move at all and the CPU time far less
than bench/relay_throughput.py's rates: it is the figure to compare two trees by.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ORIGIN = "http://127.0.0.1:8000"
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)
_NEXT = re.compile(rb'<http://127\.0\.0\.1:8000([^>]+)>; rel="next"')
_FIRST = re.compile(rb'<http://127\.0\.0\.1:8000([^>]+)>; rel="first"')
REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


class Wire(asyncio.Transport):
    """The server's end of one connection: what it writes is split into responses for ``on_response``."""

    def __init__(self, port: int, on_response: Callable[[bytes, bytes], None]) -> None:
        super().__init__()
        self._peer = ("127.0.0.1", port)
        self._on_response = on_response
        self._buffer = bytearray()
        self._closing = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        self._buffer += data
        self.batch()

    def batch(self) -> None:
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buffer[:end])
            m = _LENGTH.search(head)
            size = int(m.group(1)) if m else 0
            if len(self._buffer) < end + 4 + size:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + size])
            del self._buffer[: end + 4 + size]
            self._on_response(head, body)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": self._peer}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:  # nothing is read from a socket here: flow control is a no-op
        pass

    resume_reading = pause_reading

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol


async def run(args: argparse.Namespace) -> None:
    from uvicorn.server import ServerState

    from relay.wire import parse_requests
    from reversehub.core.settings import Settings
    from reversehub.server.app import create_app
    from reversehub.server.serve import GC_THRESHOLDS, config_for

    tmp = tempfile.mkdtemp()
    settings = Settings(
        database_url=f"sqlite:///{tmp}/bench.db", public_url=ORIGIN, log_level="warning", reply_timeout=60
    )
    app = create_app(settings)
    config = config_for(app, settings)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    ports = iter(range(1024, 65536))

    def connect(on_response: Callable[[bytes, bytes], None]) -> Any:
        protocol = config.http_protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
        wire = Wire(next(ports), on_response)
        wire.protocol = protocol
        protocol.connection_made(wire)
        return protocol

    def close(protocol: Any) -> None:
        protocol.transport.close()
        protocol.connection_lost(None)

    accept = b"application/http" if args.pipeline else b"message/http"

    class PtthBackend:
        """A PTTH connection on request URL ``url`` answering "hello" to every request."""

        def __init__(self, url: bytes) -> None:
            self.upgraded = False
            self.count = 0
            self.protocol = connect(self.on_message)
            self.wire = self.protocol.transport._transport
            self.protocol.data_received(
                b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: upgrade\r\nUpgrade: ptth\r\n"
                b"ALPN: http%%2F1.1\r\n\r\n" % url
            )

        def on_message(self, head: bytes, body: bytes) -> None:
            if not self.upgraded:
                if not head.startswith(b"HTTP/1.1 101 "):
                    raise SystemExit(f"PTTH handshake answered {head[:40]!r}")
                self.upgraded = True
                return
            if not self.count:
                loop.call_soon(self.answer)
            self.count += 1

        def answer(self) -> None:
            count, self.count = self.count, 0
            self.wire.protocol.data_received(REPLY * count)

    class Poller:
        def __init__(self, url: bytes) -> None:
            self.url = url
            self.polling = True
            self.protocol = connect(self.on_response)
            self.poll()

        def poll(self) -> None:
            self.polling = True
            self.protocol.data_received(
                b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept: %s\r\n\r\n" % (self.url, accept)
            )

        def on_response(self, head: bytes, body: bytes) -> None:
            if not self.polling:  # the reply's 202
                loop.call_soon(self.poll)
                return
            if head.startswith(b"HTTP/1.1 204"):
                loop.call_soon(self.poll)
                return
            m = _NEXT.search(head)
            if not head.startswith(b"HTTP/1.1 200") or m is None:
                raise SystemExit(f"poll answered {head[:40]!r}")
            payload = REPLY * (len(parse_requests(body)) if args.pipeline else 1)
            url, self.url, self.polling = self.url, m.group(1), False
            reply = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            loop.call_soon(self.protocol.data_received, reply % (url, accept, len(payload), payload))

    async def one_round(requests: int) -> float:
        left = [requests]
        answered = [0]
        done = loop.create_future()

        class Requester:
            def __init__(self) -> None:
                self.protocol = connect(self.on_response)
                self.send()

            def send(self) -> None:
                if left[0] > 0 and not self.protocol.transport.is_closing():
                    left[0] -= 1
                    self.protocol.data_received(b"GET /relay/bench/ HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n")

            def on_response(self, head: bytes, body: bytes) -> None:
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"requester got {head[:40]!r}")
                answered[0] += 1
                if answered[0] == requests and not done.done():
                    done.set_result(None)
                loop.call_soon(self.send)

        started = time.process_time()
        requesters = [Requester() for _ in range(args.concurrency)]
        await done
        cpu = time.process_time() - started
        for requester in requesters:
            close(requester.protocol)
        await asyncio.sleep(0.01)
        return cpu / requests * 1e6

    async with app.router.lifespan_context(app):
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)  # as reversehub serve does
        firsts = []
        registrar = connect(lambda head, body: firsts.append(_FIRST.search(head).group(1)))  # type: ignore[union-attr]
        form = b"name=bench&token=bench&lease=3600"
        for _ in range(args.pollers):  # every refresh of the registration gives a chain of request URLs
            registrar.data_received(
                b"POST /reversehttp HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(form), form)
            )
            while len(firsts) < _ + 1:
                await asyncio.sleep(0.001)
        pollers: list[Any] = [(PtthBackend if args.ptth else Poller)(url) for url in firsts]
        await one_round(min(1000, args.requests))  # warm-up
        rounds = [await one_round(args.requests) for _ in range(args.rounds)]
        mode = "PTTH" if args.ptth else "application/http pipelines" if args.pipeline else "message/http"
        print(f"CPU per relayed request ({mode}): {' '.join(f'{r:.0f}' for r in rounds)} µs", end="")
        print(f"; best {min(rounds):.0f}, median {statistics.median(rounds):.0f}")
        if args.calls:
            profile = cProfile.Profile()
            profile.enable()
            await one_round(args.requests)
            profile.disable()
            calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
            print(f"function calls per relayed request: {calls / args.requests:.0f} (cProfile, one round)")
            if args.top:
                pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
        for poller in pollers:
            if args.ptth:
                poller.wire.close()
                poller.wire.protocol.connection_lost(None)
            else:
                close(poller.protocol)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pollers", type=int, default=16)
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--ptth", action="store_true", help="--pollers PTTH connections serve the name")
    parser.add_argument("--calls", action="store_true")
    parser.add_argument("--top", type=int, default=0, help="with --calls: print the N costliest functions")
    parser.add_argument("--sort", default="tottime", help="with --top: the pstats order (tottime, cumulative, calls)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
