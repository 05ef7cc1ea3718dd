"""The relay's errors, one root, each with the HTTP status DESIGN.md gives it.

::

    RelayError
    ├── InvalidInput            400  bad name, lease, form, reply or envelope
    │   ├── HeadersTooLarge     431  too many or too large request headers
    │   └── BodyTooLarge        413  body over ``max_body_size`` (or ``max_form_size`` for a form)
    ├── Unauthorized            401  the registration token is required (--registration-token), with a challenge
    ├── TokenMismatch           403  registration token does not match
    ├── NameReserved            403  the name is reserved for another token (--reserve-name)
    ├── ClientShareSpent        403  this client holds its share of the relay's names
    ├── RateLimited             429  a name's registration budget is spent, with Retry-After
    ├── RelayFull               503  the relay holds as many registrations as it may
    ├── NotFound                404  unknown name, private URL or request URL
    ├── Conflict                409  an inspected request kept only in part cannot be replayed
    ├── Gone                    410  registration deleted while polling
    └── RequesterError               what a requester on a public URL is told
        ├── NoPoller            504  nobody polled within ``unavailable_timeout``
        ├── NoReply             504  delivered, not answered within ``reply_timeout``
        ├── BadReply            502  the application's reply was not a valid HTTP response
        ├── Unavailable         503  relay error
        │   ├── Busy            503  a name's queue or the bytes held are at their bound, with Retry-After
        │   └── MailboxesFull   503  the mailboxes of all names hold as many bytes as they may
        ├── MailboxFull         507  this mailbox name holds as many stored requests as it may
        └── Withdrawn           404  the registration was deleted while the request was queued

Endpoints map these to responses in one place (:func:`relay.endpoints.error_response`).
"""

from __future__ import annotations


class RelayError(Exception):
    status = 500
    reason = "relay error"

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or self.reason)
        if reason:
            self.reason = reason


class InvalidInput(RelayError):
    status = 400
    reason = "invalid input"


class HeadersTooLarge(InvalidInput):
    status = 431
    reason = "request headers too large"


class BodyTooLarge(InvalidInput):
    status = 413
    reason = "body too large"


class TokenMismatch(RelayError):
    status = 403
    reason = "token does not match the registration"


class Unauthorized(RelayError):
    """A token is required and was not presented; ``challenge`` is the ``WWW-Authenticate`` value."""

    status = 401
    reason = "token required"

    def __init__(self, reason: str, challenge: str) -> None:
        super().__init__(reason)
        self.challenge = challenge


class NameReserved(RelayError):
    status = 403
    reason = "name reserved"


class ClientShareSpent(RelayError):
    """The client holds ``--max-registrations-per-client`` names: one client cannot fill the relay."""

    status = 403
    reason = "too many registrations from this client"


class RateLimited(RelayError):
    """A budget of ``--rate-limit`` is spent until the window ends, ``retry_after`` seconds from now."""

    status = 429
    reason = "rate limit exceeded"

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class RelayFull(RelayError):
    status = 503
    reason = "too many registrations on this relay"


class NotFound(RelayError):
    status = 404
    reason = "not found"


class Conflict(RelayError):
    status = 409
    reason = "conflict"


class Gone(RelayError):
    status = 410
    reason = "registration deleted"


class RequesterError(RelayError):
    status = 503


class NoPoller(RequesterError):
    status = 504
    reason = "no application poller available"


class NoReply(RequesterError):
    status = 504
    reason = "the application did not reply in time"


class BadReply(RequesterError):
    status = 502
    reason = "the application sent an invalid reply"


class Unavailable(RequesterError):
    status = 503
    reason = "relay unavailable"


class Busy(Unavailable):
    """The request cannot be held now (a bound on queued requests); try again after ``retry_after`` s."""

    reason = "relay busy"

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class MailboxesFull(Unavailable):
    """The stored requests of all mailbox names are at ``--mailbox-max-bytes``."""

    reason = "the relay's mailboxes are full"


class MailboxFull(RequesterError):
    """A mailbox name is at its bound of stored requests (RFC 4918 11.5: 507 Insufficient Storage)."""

    status = 507
    reason = "this name's mailbox is full"


class Withdrawn(RequesterError):
    status = 404
    reason = "no such registration"
