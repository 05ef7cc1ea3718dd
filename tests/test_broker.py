"""The broker contract (reversehub/broker/base.py), run against every implementation.

``make()`` gives "another process": a second RedisBroker on the same Redis and prefix, or the very
same MemoryBroker (one process is all it serves).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from reversehub.core.broker import Broker, BrokerClosed, BrokerUnavailable
from reversehub.core.broker.memory import MemoryBroker
from reversehub.core.broker.redis import RedisBroker, split_prefix
from tests.support import wait_for

pytestmark = pytest.mark.anyio

Make = Callable[[], Broker]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    if request.param == "memory":
        memory = MemoryBroker()
        yield lambda: memory
        await memory.aclose()
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"reversehub-test:{uuid.uuid4().hex}:"
    made: list[RedisBroker] = []

    def factory() -> Broker:
        made.append(RedisBroker(url, prefix=prefix, linger=0.2))
        return made[-1]

    yield factory
    for b in made:
        await b.aclose()
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    keys = [k async for k in r.scan_iter(match=prefix + "*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest.fixture
def broker(make: Make) -> Broker:
    return make()


def waiting(b: Broker, queue: str) -> int:
    """Consumers blocked in pop() on ``queue`` in this broker (implementation detail, tests only)."""
    if isinstance(b, MemoryBroker):
        return sum(not f.done() for f in b._waiters.get(queue, ()))
    assert isinstance(b, RedisBroker)
    w = b._waiting.get(queue)
    return 0 if w is None else sum(not f.done() for f in w.futures)


async def drain(b: Broker, queue: str, timeout: float = 0.3) -> list[bytes]:
    items = []
    while (item := await b.pop(queue, timeout)) is not None:
        items.append(item)
    return items


# Abilities ------------------------------------------------------------------------------------
def finishes_at_once(coro: object) -> bool:
    """Run ``coro`` one step: True when it completed without handing control to the event loop."""
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return True
    coro.close()  # type: ignore[attr-defined]
    return False


async def test_declared_abilities_hold(make: Make) -> None:
    """The relay trusts these declarations (relay.service: registry caching; relay.queue: shielding)."""
    a, b = make(), make()
    assert a.spans_processes is (a is not b)
    if a.never_suspends:
        calls = [
            a.push("q", b"1"),
            a.push_front("q", b"0"),
            a.pop("q", 0),
            a.remove("q", b"1"),
            a.length("q"),
            a.set("k", b"v", 1.0, nx=True),
            a.get("k"),
            a.incr("n", 1.0),
            a.delete("k"),
            a.swap("k", b"v", 1.0),
            a.getdel("k"),
            a.set_if_absent("k", b"v", 1.0, ("k2", b"v", 1.0)),
            a.publish("ch", b"m"),
        ]
        assert [finishes_at_once(c) for c in calls] == [True] * len(calls)


# Queues ---------------------------------------------------------------------------------------
async def test_fifo_and_lengths(broker: Broker) -> None:
    assert await broker.push("q", b"a") == 1
    assert await broker.push("q", b"b") == 2
    assert await broker.push("q", b"c") == 3
    assert await broker.length("q") == 3
    assert [await broker.pop("q", 0) for _ in range(3)] == [b"a", b"b", b"c"]
    assert await broker.length("q") == 0
    assert await broker.pop("q", 0) is None


async def test_pop_times_out_with_none(broker: Broker) -> None:
    with anyio.fail_after(2):
        assert await broker.pop("empty", 0.05) is None
    assert waiting(broker, "empty") == 0


async def test_push_front_is_next_out(broker: Broker) -> None:
    await broker.push("q", b"a")
    await broker.push("q", b"b")
    await broker.push_front("q", b"z")
    assert await drain(broker, "q", 0) == [b"z", b"a", b"b"]


@pytest.mark.parametrize("method", ["push", "push_front"])
async def test_a_push_wakes_a_consumer_on_another_process(make: Make, method: str) -> None:
    consumer, producer = make(), make()
    got: list[bytes | None] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            got.append(await consumer.pop("q", 5))

        tg.start_soon(consume)
        await wait_for(lambda: waiting(consumer, "q") == 1)
        with anyio.fail_after(2):
            await getattr(producer, method)("q", b"hello")
    assert got == [b"hello"]


async def test_waiting_consumers_are_served_in_order(broker: Broker, make: Make) -> None:
    got: list[tuple[int, bytes | None]] = []
    async with anyio.create_task_group() as tg:
        for n in range(4):

            async def consume(n: int = n) -> None:
                got.append((n, await broker.pop("q", 5)))

            tg.start_soon(consume)
            await wait_for(lambda n=n: waiting(broker, "q") == n + 1)
        producer = make()
        for item in (b"0", b"1", b"2", b"3"):
            await producer.push("q", item)
    assert sorted(got) == [(0, b"0"), (1, b"1"), (2, b"2"), (3, b"3")]


async def test_every_item_goes_to_exactly_one_consumer(make: Make) -> None:
    processes = [make(), make(), make()]
    pushed = [f"item-{i}".encode() for i in range(300)]
    got: list[bytes] = []
    async with anyio.create_task_group() as tg:
        for i in range(12):

            async def consume(b: Broker = processes[i % 3]) -> None:
                while (item := await b.pop("q", 0.5)) is not None:
                    got.append(item)

            tg.start_soon(consume)
        for n, item in enumerate(pushed):
            await processes[n % 3].push("q", item)
    assert sorted(got) == sorted(pushed)
    assert len(got) == len(set(got))


async def test_cancellation_never_loses_an_item(broker: Broker, make: Make) -> None:
    """Cancel consumers at random moments while items arrive: every item is popped or still queued."""
    producer = make()
    rng = random.Random(1234)
    pushed: list[bytes] = []
    delivered: list[bytes] = []
    for round_ in range(60):
        async with anyio.create_task_group() as tg:

            async def consume(scope: anyio.CancelScope) -> None:
                with scope:
                    item = await broker.pop("q", 2)
                    if item is not None:
                        delivered.append(item)

            scope = anyio.CancelScope()
            tg.start_soon(consume, scope)
            for _ in range(rng.randrange(4)):
                await anyio.lowlevel.checkpoint()
            item = f"item-{round_}".encode()
            pushed.append(item)
            await producer.push("q", item)
            for _ in range(rng.randrange(6)):
                await anyio.lowlevel.checkpoint()
            scope.cancel()
    remaining = await drain(producer, "q")
    assert sorted(delivered + remaining) == sorted(pushed)
    assert len(delivered) + len(remaining) == len(pushed)


async def test_remove_settles_the_race_with_consumers(broker: Broker) -> None:
    await broker.push("q", b"a")
    await broker.push("q", b"b")
    assert await broker.remove("q", b"a") is True
    assert await broker.remove("q", b"a") is False  # already withdrawn
    assert await broker.pop("q", 0) == b"b"
    assert await broker.remove("q", b"b") is False  # a consumer has it
    assert await broker.remove("never", b"x") is False


async def test_remove_withdraws_only_one_copy(broker: Broker) -> None:
    for item in (b"x", b"y", b"x"):
        await broker.push("q", item)
    assert await broker.remove("q", b"x") is True
    assert await drain(broker, "q", 0) == [b"y", b"x"]


# Channels -------------------------------------------------------------------------------------
async def test_channels_fan_out_to_every_subscriber_on_every_process(make: Make) -> None:
    a, b, publisher = make(), make(), make()
    async with a.subscribe("ch") as sub_a, b.subscribe("ch") as sub_b, a.subscribe("ch") as sub_a2:
        for m in (b"1", b"2", b"3"):
            await publisher.publish("ch", m)  # right after subscribe: must not be missed
        with anyio.fail_after(2):
            for sub in (sub_a, sub_b, sub_a2):
                assert [await sub.get() for _ in range(3)] == [b"1", b"2", b"3"]


async def test_channels_are_separate_and_leaving_is_clean(make: Make) -> None:
    a, publisher = make(), make()
    async with a.subscribe("one") as one:
        async with a.subscribe("two") as two:
            await publisher.publish("two", b"for two")
            await publisher.publish("one", b"for one")
            with anyio.fail_after(2):
                assert await two.get() == b"for two"
                assert await one.get() == b"for one"
        await publisher.publish("two", b"nobody listens")
        await publisher.publish("one", b"again")
        with anyio.fail_after(2):
            assert await one.get() == b"again"
    async with a.subscribe("two") as two_again:  # subscribe again after leaving
        await publisher.publish("two", b"back")
        with anyio.fail_after(2):
            assert await two_again.get() == b"back"


async def test_subscription_iterates(broker: Broker) -> None:
    async with broker.subscribe("ch") as sub:
        await broker.publish("ch", b"x")
        await broker.publish("ch", b"y")
        got = []
        with anyio.fail_after(2):
            async for m in sub:
                got.append(m)
                if len(got) == 2:
                    break
    assert got == [b"x", b"y"]


# Keys -----------------------------------------------------------------------------------------
async def test_keys_set_get_delete(make: Make) -> None:
    a, b = make(), make()
    assert await a.get("k") is None
    assert await a.set("k", b"v") is True
    assert await b.get("k") == b"v"
    assert await b.set("k", b"w", nx=True) is False
    assert await a.get("k") == b"v"
    assert await a.set("k", b"w") is True
    assert await a.get("k") == b"w"
    assert await b.delete("k") is True
    assert await a.delete("k") is False
    assert await a.set("k", b"new", nx=True) is True


async def test_keys_expire(broker: Broker) -> None:
    assert await broker.set("short", b"v", ttl=0.05) is True
    assert await broker.set("long", b"v", ttl=60) is True
    await wait_for(lambda: _is_none(broker.get("short")), timeout=2)
    assert await broker.set("short", b"again", ttl=60, nx=True) is True  # expired counts as absent
    assert await broker.get("long") == b"v"


async def test_memory_broker_drops_expired_keys_at_a_bounded_cost() -> None:
    """Keys nobody reads again still go once expired, and sweeping them costs O(1) per write even
    while the number of keys stays put (a fan-out binds and answers thousands of requests)."""
    b = MemoryBroker()
    for i in range(5000):
        await b.set(f"gone{i}", b"v", ttl=0.01)
    await asyncio.sleep(0.02)
    for i in range(8191):
        await b.set(f"live{i}", b"v", ttl=60)
    assert len(b._keys) == 8191  # the expired ones were swept meanwhile
    sweeps = []
    sweep = b._sweep
    b._sweep = lambda: (sweeps.append(len(b._keys)), sweep())  # type: ignore[method-assign]
    for _ in range(10_000):  # binding and answering, the count of keys going 8,191 <-> 8,192
        await b.set("bound", b"v", ttl=60)
        await b.delete("bound")
    assert len(sweeps) <= 3
    await b.aclose()


async def _is_none(value: object) -> bool:
    return await value is None  # type: ignore[misc]


async def test_incr_counts_and_ttl_applies_on_creation(make: Make) -> None:
    a, b = make(), make()
    assert await a.incr("n", ttl=0.2) == 1
    assert await b.incr("n", ttl=60) == 2  # the ttl of an existing counter is left alone
    assert await a.incr("n") == 3
    await wait_for(lambda: _is_none(a.get("n")), timeout=2)
    assert await b.incr("n") == 1
    assert await a.incr("forever") == 1
    assert await a.get("forever") == b"1"


async def test_incr_by_an_amount_applies_the_ttl_on_creation(make: Make) -> None:
    """A request may cost more than one (a ping naming many topics): one round trip, whatever the cost."""
    a, b = make(), make()
    assert await a.incr("c", ttl=0.2, amount=5) == 5
    assert await b.incr("c", ttl=60, amount=3) == 8  # the ttl of an existing counter is left alone
    await wait_for(lambda: _is_none(a.get("c")), timeout=2)
    assert await b.incr("c", amount=2) == 2


async def test_swap_returns_what_it_replaced(make: Make) -> None:
    a, b = make(), make()
    assert await a.swap("s", b"1", ttl=60) is None
    assert await b.swap("s", b"2", ttl=0.05) == b"1"
    assert await a.get("s") == b"2"
    await wait_for(lambda: _is_none(a.get("s")), timeout=2)  # the new ttl applies
    assert await b.swap("s", b"3") is None  # expired counts as absent
    assert await a.swap("s", b"4") == b"3"


async def test_getdel_hands_a_value_to_exactly_one_caller(make: Make) -> None:
    a, b = make(), make()
    assert await a.getdel("g") is None
    for round_ in range(20):
        await a.set("g", b"v%d" % round_, ttl=60)
        got = await asyncio.gather(*(broker.getdel("g") for broker in (a, b, a, b)))
        assert sorted(got, key=lambda v: v is None) == [b"v%d" % round_, None, None, None]
    assert await b.get("g") is None
    await a.set("g", b"short", ttl=0.05)
    await wait_for(lambda: _is_none(a.get("g")), timeout=2)
    assert await b.getdel("g") is None


async def test_set_if_absent_sets_the_second_key_only_when_it_stored(make: Make) -> None:
    a, b = make(), make()
    assert await a.set_if_absent("bound", b"d1", 60, ("seen", b"1", 0.05)) is True
    assert await b.get("bound") == b"d1"
    assert await b.get("seen") == b"1"
    await wait_for(lambda: _is_none(a.get("seen")), timeout=2)  # each key has its own ttl
    assert await b.set_if_absent("bound", b"d2", 60, ("seen", b"2", 60)) is False
    assert await a.get("bound") == b"d1"
    assert await a.get("seen") is None  # untouched when the first key was there
    assert await a.getdel("bound") == b"d1"
    assert await b.set_if_absent("bound", b"d3", None, ("seen", b"3", None)) is True
    assert (await a.get("bound"), await a.get("seen")) == (b"d3", b"3")
    # Concurrent callers: exactly one stores.
    await a.delete("bound")
    results = await asyncio.gather(*(m.set_if_absent("bound", b"x", 60, ("seen", b"1", 60)) for m in (a, b, a, b)))
    assert sorted(results) == [False, False, False, True]


# Closing --------------------------------------------------------------------------------------
async def test_closed_broker_raises(make: Make) -> None:
    b = make()
    await b.aclose()
    with pytest.raises(BrokerClosed):
        await b.push("q", b"x")
    with pytest.raises(BrokerClosed):
        await b.push_front("q", b"x")
    with pytest.raises(BrokerClosed):
        await b.pop("q", 0)
    with pytest.raises(BrokerClosed):
        await b.publish("ch", b"x")
    with pytest.raises(BrokerClosed):
        async with b.subscribe("ch"):
            pass
    with pytest.raises(BrokerClosed):
        await b.set("k", b"v")
    with pytest.raises(BrokerClosed):
        await b.incr("k")
    with pytest.raises(BrokerClosed):
        await b.swap("k", b"v")
    with pytest.raises(BrokerClosed):
        await b.getdel("k")
    with pytest.raises(BrokerClosed):
        await b.set_if_absent("k", b"v", None, ("k2", b"v", None))


async def test_close_wakes_waiting_consumers(make: Make) -> None:
    b = make()
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            try:
                await b.pop("q", 10)
            except BrokerClosed as exc:
                errors.append(exc)

        tg.start_soon(consume)
        await wait_for(lambda: waiting(b, "q") == 1)
        # Far below the pop's 10 s; 2 s was too tight for a few Redis round trips on a loaded machine.
        with anyio.fail_after(5):
            await b.aclose()
    assert len(errors) == 1


# Redis only -----------------------------------------------------------------------------------
def test_prefix_comes_from_the_url() -> None:
    assert split_prefix("redis://h:1/2?prefix=a:b:&socket_timeout=3") == ("redis://h:1/2?socket_timeout=3", "a:b:")
    assert split_prefix("redis://h:1/2") == ("redis://h:1/2", "reversehub:")


async def test_unreachable_redis_is_reported_as_unavailable() -> None:
    b = RedisBroker("redis://127.0.0.1:1/0", connect_timeout=0.2)
    try:
        with anyio.fail_after(5):
            with pytest.raises(BrokerUnavailable):
                await b.push("q", b"x")
            with pytest.raises(BrokerUnavailable):
                await b.pop("q", 1)
            with pytest.raises(BrokerUnavailable):
                async with b.subscribe("ch"):
                    pass
            with pytest.raises(BrokerUnavailable):
                await b.get("k")
    finally:
        await b.aclose()


@pytest.mark.redis
async def test_many_idle_waiters_share_one_pubsub_connection(redis_url: str) -> None:
    """Waiting consumers hold no Redis connection each (unlike BLPOP): 500 waiting queues, none in use."""
    b = RedisBroker(redis_url, prefix=f"reversehub-test:{uuid.uuid4().hex}:")
    try:
        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(b.pop, f"q{i}", 5)
            await wait_for(lambda: sum(waiting(b, f"q{i}") for i in range(500)) == 500)
            await wait_for(lambda: not b._pool._in_use_connections)  # the waiters hold none
            for i in range(500):
                await b.push(f"q{i}", b"x")
    finally:
        await b.aclose()


@pytest.mark.redis
async def test_a_lost_pubsub_connection_is_reopened(redis_url: str) -> None:
    """Redis drops our pub/sub connection: we reconnect, resubscribe, and a waiting pop still gets its item."""
    import redis.asyncio as aioredis

    prefix = f"reversehub-test:{uuid.uuid4().hex}:"
    a, b = RedisBroker(redis_url, prefix=prefix), RedisBroker(redis_url, prefix=prefix)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        async with a.subscribe("ch") as sub, anyio.create_task_group() as tg:
            got: list[bytes | None] = []

            async def consume() -> None:
                got.append(await a.pop("q", 10))

            tg.start_soon(consume)
            await wait_for(lambda: waiting(a, "q") == 1)
            host, port = a._pubsub._conn._writer.get_extra_info("sockname")[:2]
            assert await admin.client_kill(f"{host}:{port}")
            await b.push("q", b"pushed while reconnecting")  # its wake-up may be lost: the resubscribe makes up for it
            await wait_for(lambda: bool(got), timeout=5)
            assert got == [b"pushed while reconnecting"]

            async def delivered() -> bool:  # messages published during the outage are gone; later ones arrive
                await b.publish("ch", b"ping")
                return sub._queue.qsize() > 0

            await wait_for(delivered, timeout=5, interval=0.05)
    finally:
        await admin.aclose()
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
async def test_a_lost_command_connection_is_reopened(redis_url: str) -> None:
    """Commands share one pipelined connection: when Redis drops it, what was waiting on it fails with
    BrokerUnavailable (its reply can no longer be matched), and the next command connects again."""
    import redis.asyncio as aioredis

    prefix = f"reversehub-test:{uuid.uuid4().hex}:"
    a = RedisBroker(redis_url, prefix=prefix)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await a.set("k", b"v")
        conn = a._commands._conn
        assert conn is not None
        host, port = conn._writer.get_extra_info("sockname")[:2]
        assert await admin.client_kill(f"{host}:{port}")

        async def answers() -> bool:
            try:
                return await a.get("k") == b"v"
            except BrokerUnavailable:
                return False  # the one that met the closed connection

        await wait_for(answers, timeout=5, interval=0.05)
        assert a._commands._conn is not conn
        # Many commands at once on the one connection, each with its own reply.
        values = await asyncio.gather(*(a.incr(f"n{i % 7}") for i in range(700)))
        assert sorted(values) == sorted(v for i in range(7) for v in range(1, 101))
    finally:
        await admin.aclose()
        await a.aclose()


@pytest.mark.redis
async def test_close_finishes_the_unsubscribes_of_cancelled_subscribers(redis_url: str) -> None:
    """A subscriber cancelled just before aclose(): its UNSUBSCRIBE runs in a task of its own, which
    aclose() must finish (left pending, the loop closing under it broke a later test)."""
    import asyncio

    b = RedisBroker(redis_url, prefix=f"reversehub-test:{uuid.uuid4().hex}:")
    entered = anyio.Event()

    async def listen() -> None:
        async with b.subscribe("ch"):
            entered.set()
            await anyio.sleep_forever()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await entered.wait()
            tg.cancel_scope.cancel()
    finally:
        await b.aclose()
    assert [t for t in asyncio.all_tasks() if "discard" in repr(t.get_coro())] == []
