"""The hub's errors, one root; :mod:`hub.endpoints` maps them to status codes in one place.

HubError
├── BadRequest          400: invalid or missing parameters (the reason is sent back)
│   └── URLRefused      400: a callback or topic on a loopback/private network (SSRF guard)
├── TooLarge            413: a fat ping over max_topic_size
├── NotOwner            403: status/replay without a valid proof of ownership
├── NotFound            404: no such subscription
├── Busy                503: too many verifications waiting
└── FetchFailed         a topic fetch failed (logged by the fetcher, never sent to a client)
"""

from __future__ import annotations


class HubError(Exception):
    """Root of the hub's errors."""


class BadRequest(HubError):
    """The request is invalid; ``str(exc)`` is the reason given to the client."""


class URLRefused(BadRequest):
    """A URL that resolves to a loopback, private, link-local or reserved address."""


class TooLarge(HubError):
    """A body larger than the configured limit."""


class NotOwner(HubError):
    """The caller did not prove it owns the subscription."""


class NotFound(HubError):
    """No such subscription."""


class Busy(HubError):
    """The hub cannot take more work of this kind right now."""


class FetchFailed(HubError):
    """A topic (or SUP document) could not be fetched."""
