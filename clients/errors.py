"""Errors raised by the clients. One root, so ``except ClientError`` catches them all::

    ClientError
    ├── UnreachableError      no answer from the hub, relay or topic (refused, timed out, DNS): names the URL
    ├── DiscoveryError        the topic names no hub (no Link rel="hub" header or <link rel="hub">)
    ├── RelayError            the relay refused a registration (403 name taken, 400 bad name/lease)
    ├── SubscriptionError     the hub refused the subscription, denied it, or never verified it
    ├── PublishError          the hub refused a publish or ping
    ├── OwnershipError        the hub refused a subscription's /hub/status or /hub/replay
    ├── MissedUpdates         a durable subscriber's updates FIRST..LAST are lost (reported, not raised)
    └── ClosedError           the object was used after stop()/aclose()

Every message names the URL it concerns and, where one helps, what to check. Network failures
while polling are not raised: the endpoint retries with backoff and reports its state. From calls
that need an answer now (publish, ping, discovery, starting a subscriber or an endpoint) they are
:class:`UnreachableError`, translated from ``httpx`` where they enter, with the ``httpx`` error as
``__cause__``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx


class ClientError(Exception):
    """Root of the client errors."""


class UnreachableError(ClientError):
    """No answer from ``url``: the connection was refused or timed out, or the name did not resolve."""

    def __init__(self, url: str, reason: str, hint: str = "") -> None:
        super().__init__(f"cannot reach {url} ({reason})" + (f": {hint}" if hint else ""))
        self.url = url
        self.reason = reason
        self.hint = hint


def server_hint(url: str) -> str:
    """What to check when reversehub's own endpoint at ``url`` does not answer."""
    parts = urlsplit(url)
    return f"is `reversehub serve` running at {parts.scheme}://{parts.netloc}?"


def reason_of(exc: httpx.HTTPError) -> str:
    """A few words for why a request got no answer."""
    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        lowered = text.lower()
        if "refused" in lowered or "all connection attempts failed" in lowered:
            return "connection refused"
        if "name or service not known" in lowered or "nodename nor servname" in lowered or "getaddrinfo" in lowered:
            return "unknown host"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "not an http:// or https:// URL"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unreachable(url: str, exc: httpx.HTTPError, hint: str = "") -> UnreachableError:
    """``exc`` (an ``httpx`` error from a request to ``url``) as a client error naming the URL."""
    if isinstance(exc, httpx.UnsupportedProtocol):
        hint = ""  # nothing listens for a URL without a scheme: checking the server would mislead
    return UnreachableError(url, reason_of(exc), hint)


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
