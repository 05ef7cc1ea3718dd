"""Who may use the admin side: the admin token, or a session obtained with it; never a cookie.

A cookie would be an ambient credential, and the admin shares a host with relay content: cookies
are not isolated by port (RFC 6265 8.5) and SameSite counts every port of a host as one site, so a
relayed page could overwrite it with its own ``Set-Cookie`` (session fixation) and a cross-site
form could ride on it (CSRF). Instead:

- ``POST /dashboard/login`` with the admin token returns a random session id (256 bits). The page
  keeps it in ``sessionStorage``, which is isolated by origin, ports included, and sends it as
  ``Authorization: Bearer <session>``; nothing the browser adds by itself authenticates anything.
- The server keeps only a digest of the id, as a short-lived broker key (so every process of a
  scale-out knows it) whose value is bound to the current admin token: rotating ``--admin-token``
  ends every session. ``POST /dashboard/logout`` deletes it.
- The admin token itself as Bearer (or Basic password) keeps working, for scripts.
- Guessing is throttled per client (the ``login`` budget of reversehub.core.limits, 10 a minute by
  default): every login attempt and every wrong credential presented to the admin side spends it,
  and a client that spent it gets 429 with ``Retry-After`` before its credential is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request

from reversehub.core.broker import Broker
from reversehub.core.limits import Limits
from reversehub.core.tokens import presented_token, token_matches

SESSION_KEY = "admin.session."
LOGIN = "login"


def admin_digest(request: Request) -> str | None:
    """The admin token's digest, or None when the admin side is off."""
    digest: str | None = request.app.state.settings.admin_token
    return digest


def _key(session: str) -> str:
    # Only a digest of the id is stored: a dump of the broker does not give a usable session.
    return SESSION_KEY + hashlib.sha256(session.encode()).hexdigest()


def _binding(digest: str) -> bytes:
    return hmac.new(digest.encode(), b"reversehub admin session", hashlib.sha256).hexdigest().encode()


async def open_session(broker: Broker, digest: str, ttl: float) -> str:
    """A new session id, valid for ``ttl`` seconds or until logout or a new admin token."""
    session = secrets.token_urlsafe(32)
    await broker.set(_key(session), _binding(digest), ttl)
    return session


async def close_session(broker: Broker, session: str) -> None:
    await broker.delete(_key(session))


async def is_admin(request: Request) -> bool:
    """The request presents the admin token or a live session as ``Authorization``."""
    digest = admin_digest(request)
    presented = presented_token(request.headers)
    if digest is None or presented is None:
        return False
    if token_matches(presented, digest):
        return True
    services = request.app.state.services
    if services is None:
        return False
    stored = await services.broker.get(_key(presented))
    return stored is not None and hmac.compare_digest(stored, _binding(digest))


def _limits(request: Request) -> tuple[Limits, str] | None:
    services = request.app.state.services
    client = request.scope.get("client")
    if services is None or not services.limits.applies(client):
        return None
    return services.limits, services.limits.client(client)


async def attempt(request: Request) -> int | None:
    """Count an attempt at the admin token against the client's ``login`` budget: None while within
    it, else the seconds until the client may try again (``Retry-After``)."""
    counted = _limits(request)
    return None if counted is None else await counted[0].hit(LOGIN, counted[1])


async def throttled(request: Request) -> int | None:
    """The seconds until the client may present a credential again, if it spent its ``login`` budget
    (counted by :func:`attempt`); None otherwise. Counts nothing: a right credential costs nothing."""
    counted = _limits(request)
    return None if counted is None else await counted[0].spent(LOGIN, counted[1])
