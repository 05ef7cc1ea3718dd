"""The Redis broker across a Redis restart (a server of the test's own, never the shared one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from reversehub.core.broker import BrokerUnavailable
from reversehub.core.broker.redis import RedisBroker
from tests.instances import OwnRedis, own_redis
from tests.support import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path / "redis") as server:
        yield server


async def test_a_subscription_says_once_that_messages_may_have_been_lost(redis):
    broker = RedisBroker(redis.url, connect_timeout=0.5, command_timeout=1.0)
    try:
        async with broker.subscribe("ch") as sub:
            await broker.publish("ch", b"before")
            assert await sub.get() == b"before"
            redis.stop()
            with anyio.fail_after(10), pytest.raises(BrokerUnavailable):
                await sub.get()
            redis.start()

            async def delivered() -> bool:
                try:
                    await broker.publish("ch", b"after")
                except BrokerUnavailable:
                    return False
                with anyio.move_on_after(0.2):
                    return await sub.get() == b"after"
                return False

            await wait_for(delivered, timeout=15, interval=0.1)  # the same subscription, resubscribed
    finally:
        await broker.aclose()
