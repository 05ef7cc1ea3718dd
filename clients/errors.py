"""Errors raised by the clients. One root, so ``except ClientError`` catches them all::

    ClientError
    ├── DiscoveryError        the topic names no hub (no Link rel="hub" header or <link rel="hub">)
    ├── RelayError            the relay refused a registration (403 name taken, 400 bad name/lease)
    ├── SubscriptionError     the hub refused the subscription, denied it, or never verified it
    ├── PublishError          the hub refused a publish or ping
    ├── OwnershipError        the hub refused a subscription's /hub/status or /hub/replay
    ├── MissedUpdates         a durable subscriber's updates FIRST..LAST are lost (reported, not raised)
    └── ClosedError           the object was used after stop()/aclose()

Network failures while polling are not raised: the endpoint retries with backoff and reports its
state. They surface as ``httpx`` errors only from one-shot calls (publish, ping, discovery).
"""

from __future__ import annotations


class ClientError(Exception):
    """Root of the client errors."""


class DiscoveryError(ClientError):
    """The topic advertises no hub."""


class RelayError(ClientError):
    """The relay refused to register the name."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SubscriptionError(ClientError):
    """The hub refused, denied or never verified the subscription."""


class PublishError(ClientError):
    """The hub refused a publish or ping."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OwnershipError(ClientError):
    """The hub refused a status or replay request (or has no such endpoint)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ClosedError(ClientError):
    """Used after stop()."""


class MissedUpdates(ClientError):
    """Updates ``first``..``last`` (sequence numbers) are lost: the hub no longer holds them.

    ``last`` is None when the hub cannot say how many: the subscription's lease ran out while the
    subscriber was away (nothing is numbered then), or the hub no longer knows the subscription.
    """

    def __init__(self, first: int, last: int | None, reason: str = "") -> None:
        span = f"{first}..{last}" if last is not None else f"from {first} on (how many is unknown)"
        super().__init__(f"missed updates {span}" + (f": {reason}" if reason else ""))
        self.first = first
        self.last = last
        self.reason = reason
