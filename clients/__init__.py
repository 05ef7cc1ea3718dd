"""Python clients for reversehub: a WebSub subscriber over the relay, a relay endpoint, a publisher.

::

    from clients import Subscriber, publish               # blocking
    from clients import AsyncSubscriber, AsyncPublisher   # in coroutines

See docs/clients.md.
"""

from clients.discovery import Discovered, discover
from clients.endpoint import Endpoint
from clients.errors import (
    ClientError,
    ClosedError,
    DiscoveryError,
    MissedUpdates,
    OwnershipError,
    PublishError,
    RelayError,
    SubscriptionError,
    UnreachableError,
)
from clients.publisher import AsyncPublisher, Publisher, ping, publish
from clients.subscriber import AsyncSubscriber, Subscriber
from clients.update import Update

__all__ = [
    "AsyncPublisher",
    "AsyncSubscriber",
    "ClientError",
    "ClosedError",
    "Discovered",
    "DiscoveryError",
    "Endpoint",
    "MissedUpdates",
    "OwnershipError",
    "PublishError",
    "Publisher",
    "RelayError",
    "Subscriber",
    "SubscriptionError",
    "UnreachableError",
    "Update",
    "discover",
    "ping",
    "publish",
]
