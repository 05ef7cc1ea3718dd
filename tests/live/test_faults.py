"""Faults survived over real processes: a ``reversehub serve`` whose Redis restarts under relayed
requests, whose PostgreSQL goes away for 10 s, and whose background work ends (issue 14 item 6).

The database and the broker here are servers of the test's own (tests/instances.py), started on free
ports in temp dirs: the shared PostgreSQL and Redis are never stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from reversehub.server.serve import EXIT_FAILED
from tests.instances import OwnPostgres, OwnRedis, own_postgres, own_redis
from tests.live import test_scaleout
from tests.live.test_scaleout import started
from tests.relay.helpers import links
from tests.support import free_port, wait_for

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
            # One more requester gives up (its connection closes): its wait ends at once, it does
            # not hold its place until a deadline.
            async with httpx.AsyncClient(timeout=0.5) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.get(f"{public}gives-up")

            async def freed() -> bool:
                text = (await client.get(proc.base + "/metrics")).text
                return 'relay_requests_total{outcome="RequesterGone"} 1.0' in text

            await wait_for(freed, timeout=5, interval=0.1)
            assert not answers
            stopped = time.monotonic()
            redis.stop()
            await anyio.sleep(3)  # longer than the unavailable timeout: every requester's check falls in it
            redis.start()
            restarted = time.monotonic()
        print(f"last requester answered {max(at for _, at in answers.values()) - stopped:.1f} s after Redis stopped")
        assert sorted(answers) == list(range(6))
        for i, (status, at) in answers.items():
            assert status in (503, 504), (i, status)
            assert at - restarted < REPLY_TIMEOUT + MARGIN, (i, at - restarted)
        assert proc.alive(), proc.output()


@pytest.fixture
def postgres() -> Iterator[OwnPostgres]:
    with own_postgres() as server:
        yield server


OUTAGE = 10.0  # seconds PostgreSQL is away (the measurement)
RESUME_WITHIN = 20.0  # seconds after PostgreSQL is back until the process serves again


async def test_a_postgresql_outage_is_answered_503_and_survived(launch, postgres):
    """On main a 10 s outage answered some requests 500, kept /readyz's view of it from clients
    and, in 4 of 5 runs, left the process half-dead for good (its lifespan ended)."""
    from tests import pgdb

    database = await pgdb.create_database(postgres.url, migrate=True)
    proc = launch("--database-url", database, "--allow-private-networks", "--reply-timeout", "3")
    topic = "http://example.com/feed"
    async with httpx.AsyncClient(timeout=30) as client:
        await started(client, proc)
        base = proc.base

        async def publish() -> httpx.Response:
            return await client.post(base + "/publish", params={"hub.topic": topic}, content=b"x")

        assert (await publish()).status_code == 204
        r = await client.post(base + "/reversehttp", data={"name": "app", "token": "t"})
        assert r.status_code == 201, r.text
        poll_url = links(r)["first"]
        private = r.headers["location"]

        postgres.stop()
        away = time.monotonic()
        health = await client.get(base + "/healthz")  # before any request failed: it looks
        assert health.status_code == 200 and "database not answering" in health.text, health.text
        seen: dict[str, set[int]] = {}
        while time.monotonic() - away < OUTAGE:
            answers = {
                "publish": await publish(),
                "register": await client.post(base + "/reversehttp", data={"name": "other", "token": "t"}),
                "private": await client.get(private),
                "poll": await client.get(poll_url),
                "public": await client.get(base + "/relay/nobody/"),
                "status": await client.get(base + "/hub/status", params={"hub.topic": topic, "hub.callback": topic}),
                "readyz": await client.get(base + "/readyz"),
            }
            for what, response in answers.items():
                seen.setdefault(what, set()).add(response.status_code)
                assert response.status_code < 500 or response.status_code == 503, (what, response.text)
                if response.status_code == 503:
                    assert int(response.headers["Retry-After"]) > 0, what
            health = await client.get(base + "/healthz")
            assert health.status_code == 200 and "degraded" in health.text, health.text  # alive, says why
            await anyio.sleep(0.5)
        assert proc.alive(), proc.output()
        assert seen["publish"] == {503} and seen["register"] == {503} and seen["readyz"] == {503}, seen

        postgres.start()
        back = time.monotonic()

        async def publishes() -> bool:
            return (await publish()).status_code == 204

        async def ready() -> bool:
            return (await client.get(base + "/readyz")).status_code == 200

        await wait_for(publishes, timeout=RESUME_WITHIN, interval=0.2)
        print(f"publishes answered 204 again {time.monotonic() - back:.1f} s after PostgreSQL was back")
        await wait_for(ready, timeout=RESUME_WITHIN, interval=0.2)  # it holds 503 READY_HOLD s after a failure
        print(f"/readyz 200 again {time.monotonic() - back:.1f} s after PostgreSQL was back")
        assert (await client.get(base + "/healthz")).text == "ok\n"
        assert proc.alive(), proc.output()
        log = proc.output()
        assert "Traceback" not in log or "Exception in ASGI application" not in log, log


# A server whose hub's background work ends at once (standing in for any way it could end: every
# loop in it is supervised, so only a bug outside them gets there).
ENDS = """
import sys
from hub.service import Hub

async def ends(self):
    return None

Hub.run = ends
from reversehub.server.cli import main
main(prog_name="reversehub")
"""


async def test_a_server_whose_background_work_ends_exits_non_zero(tmp_path):
    """On main such a process stayed up half-dead: /healthz 503, subscribes 503, publishes 204.
    (With --workers the supervisor starts another worker for one that exits non-zero.)"""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", ENDS, "serve", "--port", str(port)]
            + ["--database-url", f"sqlite:///{tmp_path / 'hub.db'}", "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert popen.wait(60) == EXIT_FAILED, log.read_text()
        assert "cannot go on" in log.read_text()
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(10)
