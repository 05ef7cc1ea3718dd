"""The hub's errors, one root; :func:`hub.endpoints.error_response` maps them to HTTP in one place.

HubError
├── BadRequest          400: invalid or missing parameters (the reason is sent back)
│   └── URLRefused      400: a callback or topic on a loopback/private network (SSRF guard)
├── Unauthorized        401: publishing needs a token this request did not present (hub.authz)
├── Forbidden           403: refused whatever the token (hub.authz: a fat ping from an untrusted network)
│   └── NotOwner        403: status/replay without a valid, unused proof (no such subscription too)
├── NotFound            404: no such subscription
├── TooLarge            413: a body over its limit (max_form_size, max_topic_size)
├── KeyReused           422: an Idempotency-Key used before for another request (hub.store.idempotency)
├── RateLimited         429: a topic's or callback host's budget is spent (with Retry-After)
├── Busy                503: too many verifications waiting, or the hub is starting or closing (with Retry-After)
└── FetchFailed         a topic fetch failed (logged by the fetcher, never sent to a client)
"""

from __future__ import annotations


class HubError(Exception):
    """Root of the hub's errors; ``str(exc)`` is the short reason a client is given."""


class BadRequest(HubError):
    """The request is invalid; ``str(exc)`` is the reason given to the client."""


class URLRefused(BadRequest):
    """A URL that resolves to a loopback, private, link-local or reserved address."""


class Unauthorized(HubError):
    """The request needs a token it did not present (answered with a ``WWW-Authenticate`` challenge)."""


class Forbidden(HubError):
    """The request is refused whoever asks this way."""


class NotOwner(Forbidden):
    """The caller did not prove it owns the subscription."""


class NotFound(HubError):
    """No such subscription."""


class TooLarge(HubError):
    """A body larger than the configured limit."""


class RateLimited(HubError):
    """A budget of ``--rate-limit`` is spent until the window ends, ``retry_after`` seconds from now."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Busy(HubError):
    """The hub cannot take more work of this kind right now; ask again in ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class FetchFailed(HubError):
    """A topic (or SUP document) could not be fetched."""


class KeyReused(HubError):
    """A publish's ``Idempotency-Key`` was used before, within the retention window, for another request."""
