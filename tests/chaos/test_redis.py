"""Redis restarted (killed, keys gone, started again on its port) under three processes mid fan-out,
and under two processes with relayed requests waiting (issue 14 items 6 and 7).

Redis carries only what is transient: wake-ups of the outbox, relayed requests and their replies.
A fan-out lives in PostgreSQL rows, so a restart of Redis must cost it no delivery and little time;
a relayed request lost with Redis must still be answered (503 or 504), by its requester's own
deadline, never held."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import httpx
import pytest

from relay.wire import HttpResponse, serialize_response
from tests.chaos.figures import Receiver, Tally, judge, report, settle
from tests.chaos.processes import Redis, Serve, logged
from tests.chaos.workload import RelaySubscriber, fan_out, mid_fan_out, path_of, probing
from tests.relay.helpers import links
from tests.support import wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

ON_RELAY = 10  # of the fan-out's subscribers, behind the relay
REDIS_DOWN = 2.0  # seconds Redis stays away
REDIS_DOWN_RELAY = 3.0  # seconds Redis stays away under waiting requests
# After Redis is back: the deliveries to relay subscribers that failed while it was away (lost with
# its queues, or answered 503) wait out the hub's retry backoff, which doubles from 1 s with jitter
# (delivery_retry_base): one that failed three times through the outage and the reconnect waits up
# to 8 s more. Then each relay subscriber receives its remaining updates one after another, a poll's
# round trip each, on a loaded machine. 20 s holds that; the direct callbacks need far less.
FAN_OUT_BOUND = 20.0
TIMEOUTS = 5.0  # --unavailable-timeout and --reply-timeout of the relay test
# A requester is answered by its own deadline (TIMEOUTS) plus the time a loaded two-core machine
# may take to run the timer and write the 504; past HELD it counts as left unanswered.
ANSWER_BOUND = TIMEOUTS + 10.0
HELD = TIMEOUTS + 25.0


async def restart(redis: Redis, down: float = REDIS_DOWN) -> float:
    """Kill Redis, keep it away ``down`` seconds (the fault itself), start it again; when it is back."""
    redis.stop()
    await anyio.sleep(down)
    redis.start()
    return time.monotonic()


async def test_redis_restart_mid_fan_out(
    cluster: list[Serve], database: str, redis: Redis, receiver: tuple[Receiver, str], client: httpx.AsyncClient
) -> None:
    rcv, cb_base = receiver
    topic = "https://example.com/chaos/redis"
    # Some subscribers sit behind the relay: their deliveries cross Redis, whose restart loses
    # whatever it held of them; the hub must send those again.
    on_relay = [RelaySubscriber(client, cluster, rcv, f"sub{i}") for i in range(ON_RELAY)]
    async with anyio.create_task_group() as tg:
        for sub in on_relay:
            await sub.register()
            tg.start_soon(sub.run)
        urls = {sub.key: sub.public for sub in on_relay}
        keys, accepted, tally = await fan_out(client, cluster, rcv, cb_base, database, topic, urls)
        at_fault = mid_fan_out(rcv)
        async with probing(client, cluster, topic, cb_base) as prober:
            prober.phase = "outage"
            back = await restart(redis)
            prober.phase = "after"
            await settle(rcv, keys, accepted, timeout=FAN_OUT_BOUND)  # probes go on until the fan-out is through
        figures = await settle(rcv, keys, accepted + prober.accepted, timeout=FAN_OUT_BOUND)
        tg.cancel_scope.cancel()
    tally.counts.update(prober.tally.counts)
    await judge(
        "Redis restart mid fan-out (3 processes), from Redis back",
        figures,
        back,
        FAN_OUT_BOUND,
        tally,
        database,
        at_fault=at_fault,
        probe_publishes_accepted=len(prober.accepted),
        logged=logged(*cluster),
    )
    assert all(p.alive() for p in cluster)


async def register(client: httpx.AsyncClient, base: str, name: str) -> dict[str, str]:
    r = await client.post(base + "/reversehttp", data={"name": name, "token": "t"})
    assert r.status_code in (201, 204), r.text
    return links(r)


async def poll(client: httpx.AsyncClient, proc: Serve, first: str, answer: bool, taken: list[float]) -> None:
    """An application polling ``proc``: answers every request (``answer``) or holds each unanswered."""
    path = path_of(first)
    while True:
        try:
            r = await client.get(proc.base + path, timeout=60)
        except httpx.TransportError:
            await anyio.sleep(0.2)  # pacing the retry of a poll the relay dropped
            continue
        if r.status_code != 200:
            if r.status_code != 204:
                await anyio.sleep(0.2)
            continue
        taken.append(time.monotonic())
        if answer:
            reply = serialize_response(HttpResponse(200, [("Content-Type", "text/plain")], b"echo", "OK"))
            try:
                await client.post(proc.base + path, content=reply, headers={"content-type": "message/http"})
            except httpx.TransportError:
                pass
        path = path_of(links(r).get("next", first))


async def test_redis_restart_with_relayed_requests_waiting(
    database: str, redis: Redis, launch: Callable[..., Serve], client: httpx.AsyncClient
) -> None:
    """A stream of requests on two processes, to a name nobody polls (504 after the unavailable
    timeout) and to one whose poller takes them and never answers (504 after the reply timeout), from
    before Redis goes away until after it is back, so that their deadlines fall before, during and
    just after the outage: every one is answered within its deadline and a margin, none with 500;
    afterwards the relay works again through both processes."""
    timeouts = ["--unavailable-timeout", str(TIMEOUTS), "--reply-timeout", str(TIMEOUTS)]
    procs = [launch("--database-url", database, "--redis-url", redis.url, *timeouts) for _ in range(2)]
    for proc in procs:
        await proc.ready(client)
    a, b = procs
    ghost = await register(client, a.base, "ghost")
    slow = await register(client, a.base, "slow")
    echo = await register(client, a.base, "echo")
    tally = Tally()
    answered_in: list[float] = []
    held_taken: list[float] = []

    async def request(base: str, url: str, i: int) -> None:
        # Every fourth requester gives up after a second (it disconnects): the relay must let its
        # request go at once, not hold it for nobody.
        patient = i % 4 != 3
        t0 = time.monotonic()
        try:
            r = await client.get(f"{base}{path_of(url)}r{i}", timeout=HELD if patient else 1.0)
            tally.add("relayed", r.status_code)
            answered_in.append(time.monotonic() - t0)
        except httpx.TimeoutException:
            tally.add("relayed", "unanswered" if patient else "gave up")

    sent = 0
    recovered: dict[str, float] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll, client, a, slow["first"], False, held_taken)
        tg.start_soon(poll, client, b, echo["first"], True, [])
        async with anyio.create_task_group() as requests:

            async def stream(until: anyio.Event) -> None:
                nonlocal sent
                while not until.is_set():
                    requests.start_soon(request, procs[sent % 2].base, (ghost, slow)[sent // 2 % 2]["related"], sent)
                    sent += 1
                    await anyio.sleep(0.1)  # pacing: ten requests a second

            stop = anyio.Event()
            requests.start_soon(stream, stop)
            await wait_for(lambda: len(held_taken) >= 5, timeout=TIMEOUTS)
            await anyio.sleep(TIMEOUTS - 1)  # the first deadlines are near when Redis goes
            back = await restart(redis, down=REDIS_DOWN_RELAY)
            for proc in procs:
                requests.start_soon(relay_back, client, proc, echo["related"], back, recovered, tally)
            await anyio.sleep(TIMEOUTS)  # requests sent right after Redis is back wait too
            stop.set()
        tg.cancel_scope.cancel()

    async def held() -> float:
        return sum([await metric(client, p.base, "relay_held_bytes") for p in procs])

    # Everything answered or abandoned: no process holds a byte of it any more.
    freed = await wait_until(lambda: _zero(held()), timeout=ANSWER_BOUND)
    report(
        "Redis restart with relayed requests waiting (2 processes)",
        requests=sent,
        unanswered=tally.total("unanswered"),
        slowest_answer=round(max(answered_in, default=0), 1),
        bound=ANSWER_BOUND,
        statuses=tally,
        relay_back_after=recovered,
        bytes_held_at_the_end=await held(),
        logged=logged(*procs),
    )
    assert tally.total("unanswered") == 0, tally
    assert tally.total("500") == 0, tally
    assert max(answered_in) <= ANSWER_BOUND
    assert len(recovered) == 2
    assert freed, "relayed requests still held after every requester was answered or gone"


async def metric(client: httpx.AsyncClient, base: str, name: str) -> float:
    text = (await client.get(base + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def _zero(value: Awaitable[float]) -> bool:
    return await value == 0


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Like :func:`wait_for`, but says whether the condition came true instead of raising."""
    try:
        await wait_for(condition, timeout=timeout, interval=0.2)
    except AssertionError:
        return False
    return True


async def relay_back(
    client: httpx.AsyncClient, proc: Serve, url: str, back: float, recovered: dict[str, float], tally: Tally
) -> None:
    """The relay works again through ``proc`` by itself: a request to an answering name gets 200."""
    while time.monotonic() - back < HELD:
        r = await client.get(f"{proc.base}{path_of(url)}after", timeout=HELD)
        tally.add("relayed after", r.status_code)
        if r.status_code == 200:
            recovered[proc.base] = round(time.monotonic() - back, 1)
            return
        await anyio.sleep(0.2)  # pacing the retries
