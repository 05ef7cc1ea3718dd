"""Faults survived over real processes: a ``reversehub serve`` whose Redis restarts under relayed
requests, whose PostgreSQL goes away for 10 s, and whose background work ends (issue 14 item 6).

The database and the broker here are servers of the test's own (tests/instances.py), started on free
ports in temp dirs: the shared PostgreSQL and Redis are never stopped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.instances import OwnRedis, own_redis
from tests.live import test_scaleout
from tests.live.test_scaleout import started
from tests.relay.helpers import links

pytestmark = [pytest.mark.anyio, pytest.mark.live]

REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))
launch = test_scaleout.launch  # the fixture: ``launch(*flags)`` starts ``reversehub serve``


@pytest.fixture
def database(tmp_path: Path) -> str:
    """The database ``launch`` (tests.live.test_scaleout) outlives: a SQLite file, unless a test
    brings its own PostgreSQL."""
    return f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


REPLY_TIMEOUT = 4.0
MARGIN = 6.0  # a loaded two-core machine: the restart, reconnects and the answer's way back


async def test_requesters_waiting_through_a_redis_restart_are_all_answered(launch, redis, database):
    """On main they were held until the server stopped (110-199 s): their only deadline was a
    wake-up published through Redis, lost while the pub/sub connection came back."""
    proc = launch(
        "--database-url",
        database,
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
        await started(client, proc)
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
