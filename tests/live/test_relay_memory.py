"""The relay's memory is bounded by configuration (issue 13 H1, H2), read from a real server's RSS.

``reversehub serve`` runs as operators run it, with its default bounds, and its resident memory is
read from ``/proc/PID/status`` while requesters on raw sockets send it large bodies: 4 × 300 MiB
POSTed to made-up request URLs, then 60 × 10 MiB requests for a name whose one poller takes a
request and never answers. A requester sends its body until it is answered (or all is sent), as a
client that waits for a response while it uploads would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from tests.support import free_port, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

MiB = 1024 * 1024
CHUNK = 256 * 1024
MADE_UP = "/reversehttp/r/" + "A" * 56
_BLOCK = b"x" * CHUNK


def rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Peak:
    """The highest RSS of ``pid`` seen while :meth:`run` runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.pid))
            await anyio.sleep(0.01)


class RawPost:
    """One POST on a connection of its own: the head, then the body until it is answered or all sent."""

    def __init__(self, port: int, path: str, size: int) -> None:
        self.port = port
        self.path = path
        self.size = size
        self.sent = 0
        self.answer: bytes | None = None  # the response head; b"" if the connection closed first

    def settled(self) -> bool:
        return self.answer is not None or self.sent == self.size

    async def run(self) -> None:
        """Send, and keep the connection until cancelled (a requester waiting for its reply)."""
        async with await anyio.connect_tcp("127.0.0.1", self.port) as stream:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, stream)
                head = f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {self.size}\r\n\r\n"
                try:
                    await stream.send(head.encode())
                    while self.sent < self.size and self.answer is None:
                        n = min(CHUNK, self.size - self.sent)
                        await stream.send(_BLOCK if n == CHUNK else _BLOCK[:n])
                        self.sent += n
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                    pass

    async def _read(self, stream: SocketStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            self.answer = data.partition(b"\r\n\r\n")[0]
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            self.answer = b""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, int, int]]:
    """``reversehub serve`` with its default bounds and long relay timeouts: (base URL, port, pid)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "reversehub", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--database-url", f"sqlite:///{tmp_path / 'relay.db'}", "--log-level", "warning"]
    command += ["--poll-timeout", "60", "--unavailable-timeout", "30", "--reply-timeout", "30"]
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            async with httpx.AsyncClient(timeout=10) as http:

                async def up() -> bool:
                    try:
                        return (await http.get(base + "/healthz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await wait_for(up, timeout=60, interval=0.1)
            yield base, port, process.pid
        finally:
            process.terminate()
            process.wait(timeout=30)


async def held_bytes(http: httpx.AsyncClient) -> float:
    found = re.search(r"^relay_held_bytes (\S+)$", (await http.get("/metrics")).text, re.M)
    assert found, "no relay_held_bytes on /metrics"
    return float(found.group(1))


async def test_bodies_posted_to_made_up_request_urls_are_not_read(server: tuple[str, int, int]) -> None:
    _, port, pid = server
    baseline = rss(pid)
    peak = Peak(pid)
    posts = [RawPost(port, MADE_UP, 300 * MiB) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(peak.run)
        with anyio.fail_after(120):
            async with anyio.create_task_group() as requesters:
                for post in posts:
                    requesters.start_soon(post.run)
                await wait_for(lambda: all(p.answer is not None for p in posts), timeout=120)
                requesters.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    assert peak.peak - baseline < 64 * MiB, f"grew by {(peak.peak - baseline) / MiB:.0f} MiB"
    assert [p.answer.split(b"\r\n")[0] for p in posts if p.answer is not None] == [b"HTTP/1.1 404 Not Found"] * 4
    assert all(p.sent < p.size for p in posts), "answered only once the whole body was sent"


async def test_requests_for_a_name_that_never_answers_hold_a_bounded_memory(server: tuple[str, int, int]) -> None:
    base, port, pid = server
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        registered = await http.post("/reversehttp", data={"name": "hog", "token": "t"})
        assert registered.status_code == 201
        first = registered.links["first"]["url"]
        baseline = rss(pid)
        peak = Peak(pid)
        async with anyio.create_task_group() as tg:
            tg.start_soon(peak.run)
            async with anyio.create_task_group() as requesters:
                taken = RawPost(port, "/relay/hog/0", 10 * MiB)
                requesters.start_soon(taken.run)
                poll = await http.get(first)  # the one poller takes request 0 and never answers it
                assert poll.status_code == 200 and len(poll.content) > 10 * MiB
                del poll
                posts = [RawPost(port, f"/relay/hog/{i}", 10 * MiB) for i in range(1, 60)]
                for post in posts:
                    requesters.start_soon(post.run)
                await wait_for(lambda: all(p.settled() for p in posts), timeout=60)
                waiting = [p for p in posts if p.answer is None]
                refused = [p.answer for p in posts if p.answer is not None]
                assert len(waiting) <= 6, f"{len(waiting)} requests of 10 MiB held for one name"
                # What the waiting ones hold is all read: request 0 and each waiting one, 10 MiB apiece.
                expected = (1 + len(waiting)) * 10 * MiB

                async def all_read() -> bool:
                    return await held_bytes(http) >= expected

                await wait_for(all_read, timeout=30)
                grown = peak.peak - baseline
                requesters.cancel_scope.cancel()  # every requester goes away

            async def given_back() -> bool:
                return await held_bytes(http) == 0

            await wait_for(given_back, timeout=10)  # the requesters left: well before the 30 s reply timeout
            tg.cancel_scope.cancel()
    assert len(refused) >= 53
    for answer in refused:
        assert answer.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: " in answer.lower(), answer
    assert grown < 256 * MiB, f"grew by {grown / MiB:.0f} MiB"
