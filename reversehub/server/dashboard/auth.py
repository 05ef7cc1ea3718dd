"""Who may see the dashboard: the admin token, as a Bearer header or as a login cookie.

The cookie never holds the token itself but a value derived from its digest (an HMAC), so a
stolen cookie does not reveal the token; it is HttpOnly (no script reads it) and SameSite=Strict
(no other site's page can make the browser send it). The token is never put in a URL. Actions
made with the cookie also need the CSRF token the page carries, sent back in ``X-CSRF-Token``.
Rotating ``--admin-token`` ends every session.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import Response

from reversehub.core.tokens import presented_token, token_matches

COOKIE = "reversehub_admin"
CSRF_HEADER = "x-csrf-token"


def admin_digest(request: Request) -> str | None:
    digest: str | None = request.app.state.settings.admin_token
    return digest


def _derive(digest: str, purpose: str) -> str:
    return hmac.new(digest.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def session_value(digest: str) -> str:
    return _derive(digest, "reversehub dashboard session")


def csrf_token(digest: str) -> str:
    return _derive(digest, "reversehub dashboard csrf")


def bearer_ok(request: Request) -> bool:
    return token_matches(presented_token(request.headers), admin_digest(request))


def cookie_ok(request: Request) -> bool:
    digest, cookie = admin_digest(request), request.cookies.get(COOKIE)
    return digest is not None and cookie is not None and hmac.compare_digest(cookie, session_value(digest))


def is_admin(request: Request) -> bool:
    return bearer_ok(request) or cookie_ok(request)


def may_act(request: Request) -> bool:
    """An action (a POST) is allowed with the Bearer token, or with the cookie plus the CSRF token."""
    if bearer_ok(request):
        return True
    digest = admin_digest(request)
    sent = request.headers.get(CSRF_HEADER, "")
    return cookie_ok(request) and digest is not None and hmac.compare_digest(sent, csrf_token(digest))


def set_session(response: Response, request: Request, digest: str) -> None:
    secure = request.app.state.settings.public_origin.startswith("https:")
    response.set_cookie(COOKIE, session_value(digest), httponly=True, samesite="strict", secure=secure, path="/")


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
