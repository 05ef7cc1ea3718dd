"""Errors raised by the clients. One root, so ``except ClientError`` catches them all::

    ClientError
    ├── DiscoveryError        the topic names no hub (no Link rel="hub" header or <link rel="hub">)
    ├── RelayError            the relay refused a registration (403 name taken, 400 bad name/lease)
    ├── SubscriptionError     the hub refused the subscription, denied it, or never verified it
    ├── PublishError          the hub refused a publish or ping
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


class ClosedError(ClientError):
    """Used after stop()."""
