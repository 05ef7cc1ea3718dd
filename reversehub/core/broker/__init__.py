"""The broker carries transient messages between processes: queues, fan-out channels, short-lived keys.

``memory.py`` serves one process (the embedded default); ``redis.py`` lets any number of processes act
as one. Durable state never goes through here: that is the database's job.
"""

from __future__ import annotations

from reversehub.core import extras
from reversehub.core.broker.base import Broker, BrokerClosed, BrokerUnavailable, Subscription

__all__ = ["Broker", "BrokerClosed", "BrokerUnavailable", "Subscription", "make_broker"]


def make_broker(redis_url: str | None) -> Broker:
    """The in-process broker, or the Redis one when a URL is given (imported only then)."""
    if redis_url:
        extras.require("redis", "--redis-url")
        from reversehub.core.broker.redis import RedisBroker

        return RedisBroker(redis_url)
    from reversehub.core.broker.memory import MemoryBroker

    return MemoryBroker()
