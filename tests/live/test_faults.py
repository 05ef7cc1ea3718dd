"""Faults survived over real processes: a ``reversehub serve`` whose Redis restarts under relayed
requests, whose PostgreSQL goes away for 10 s, and whose background work ends (issue 14 item 6).

The database and the broker here are servers of the test's own (tests/instances.py), started on free
ports in temp dirs: the shared PostgreSQL and Redis are never stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from tests.instances import OwnRedis, own_redis
from tests.relay.helpers import links
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    base: str
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``launch(*flags, argv=None)`` starts ``reversehub serve`` on a free port; stopped at the end."""
    procs: list[Proc] = []

    def start(*flags: str, argv: list[str] | None = None) -> Proc:
        port = free_port()
        log = Path(tempfile.mkstemp(dir=tmp_path, suffix=".log")[1])
        command = argv if argv is not None else [REVERSEHUB, "serve"]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*command, "--port", str(port), "--log-level", "warning", *flags],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        procs.append(Proc(popen, f"http://127.0.0.1:{port}", log))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.alive():
            proc.popen.terminate()
            try:
                proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
        proc.popen.wait(10)
        print(f"--- {proc.base} exited {proc.popen.returncode}:\n{proc.output()}")  # shown when a test fails


async def healthy(client: httpx.AsyncClient, proc: Proc, timeout: float = 30) -> None:
    async def ready() -> bool:
        assert proc.alive(), proc.output()
        try:
            return (await client.get(proc.base + "/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(ready, timeout=timeout, interval=0.05)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


REPLY_TIMEOUT = 4.0
MARGIN = 6.0  # a loaded two-core machine: the restart, reconnects and the answer's way back


async def test_requesters_waiting_through_a_redis_restart_are_all_answered(launch, redis, tmp_path):
    """On main they were held until the server stopped (110-199 s): their only deadline was a
    wake-up published through Redis, lost while the pub/sub connection came back."""
    proc = launch(
        "--database-url",
        f"sqlite:///{tmp_path / 'hub.db'}",
        "--redis-url",
        redis.url,
        "--reply-timeout",
        str(REPLY_TIMEOUT),
        "--unavailable-timeout",
        "2",
        "--poll-timeout",
        "2",
        "--allow-private-networks",
    )
    async with httpx.AsyncClient(timeout=60) as client:
        await healthy(client, proc)
        r = await client.post(proc.base + "/reversehttp", data={"name": "app", "token": "t"})
        assert r.status_code == 201, r.text
        found = links(r)
        public = found["related"]
        answers: dict[int, tuple[int, float]] = {}

        async def request(i: int) -> None:
            response = await client.get(f"{public}item/{i}")
            answers[i] = (response.status_code, time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, 0)
            # The application takes the first request and never answers it: it waits for its reply.
            poll = await client.get(found["first"])
            assert poll.status_code == 200, poll.text
            for i in range(1, 6):  # the rest wait in the queue: the application is busy, not absent
                tg.start_soon(request, i)
            await anyio.sleep(0.5)
            assert not answers
            redis.stop()
            await anyio.sleep(3)  # longer than the unavailable timeout: every requester's check falls in it
            redis.start()
            restarted = time.monotonic()
        assert sorted(answers) == list(range(6))
        for i, (status, at) in answers.items():
            assert status in (503, 504), (i, status)
            assert at - restarted < REPLY_TIMEOUT + MARGIN, (i, at - restarted)
        assert proc.alive(), proc.output()
