"""A requester's deadline is its own: it holds whatever the broker does (issue 14 item 6).

On main a requester's only clock was a wake-up published through the broker: a broker that failed
to carry it (Redis restarting) left the requester waiting for ever. tests/live/test_faults.py
restarts a real Redis under waiting requesters.
"""

from __future__ import annotations

import time

import anyio
import pytest

from reversehub.core.broker import BrokerUnavailable
from reversehub.core.broker.memory import MemoryBroker
from tests.relay.helpers import register

pytestmark = pytest.mark.anyio


class ChannelsDown(MemoryBroker):
    """A broker whose channels carry nothing once ``down`` is set (queues and keys still work)."""

    down = False

    async def publish(self, channel: str, message: bytes) -> None:
        if self.down and channel.startswith("relay.reply."):
            raise BrokerUnavailable("channels are down")
        await super().publish(channel, message)


@pytest.mark.parametrize("poller", [False, True], ids=["no poller: 504 at the unavailable timeout", "taken: 504"])
async def test_a_requester_is_answered_at_its_deadline_when_the_broker_carries_nothing(make_app, poller):
    broker = ChannelsDown()
    _, client = await make_app(broker=broker, unavailable_timeout=0.3, reply_timeout=1.0)
    urls = await register(client, "alice")
    broker.down = True
    started = time.monotonic()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            result = {}

            async def request() -> None:
                result["r"] = await client.get("/relay/alice/x")

            tg.start_soon(request)
            if poller:  # a poller takes it and never answers: the reply timeout applies
                assert (await client.get(urls["first"])).status_code == 200
    assert result["r"].status_code == 504
    assert time.monotonic() - started < 1.0 + 3.0
