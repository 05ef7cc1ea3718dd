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
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request

from reversehub.core.broker import Broker
from reversehub.server.security import presented_token, token_matches

SESSION_KEY = "admin.session."


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
