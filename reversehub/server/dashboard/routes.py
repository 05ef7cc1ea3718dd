"""The admin side's routes: ``/`` (the page), login/logout, static files, the live events, the JSON
API and ``GET /reversehttp`` (the relay's list of names).

Off unless ``--admin-token`` is set: every route then answers 404, as if it did not exist. These
routes are served only on an origin no relay public URL is served on (reversehub.server.app
``create_admin_app``); with host-based relay names they also refuse any host under the relay domain.
The page and its assets carry no state and need no credential; everything else needs
``Authorization`` (the admin token or a session, reversehub.server.dashboard.auth).
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from relay import endpoints as relay_endpoints
from reversehub.core.broker import BrokerUnavailable
from reversehub.core.tokens import presented_token, token_matches
from reversehub.server.dashboard import auth, live, state

HERE = Path(__file__).parent
STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page loads only its own script and style and connects only to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_LOGIN_BODY = 4096
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="reversehub"'}

Endpoint = Callable[[Request], Awaitable[Response]]


def _template(name: str, **values: str) -> str:
    text = (HERE / "templates" / name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return text


def _page(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)


def _on_relay_host(request: Request) -> bool:
    """A host under ``--relay-domain`` is a relay name's origin: the admin side is never there."""
    domain = request.app.state.settings.relay_domain
    host = (request.url.hostname or "").lower().rstrip(".")
    return bool(domain) and host.endswith("." + str(domain).lower().strip("."))


def _too_many(retry_after: int) -> Response:
    return PlainTextResponse(
        "too many attempts at the admin token\n", status_code=429, headers={"Retry-After": str(retry_after)}
    )


def _off(request: Request) -> bool:
    return auth.admin_digest(request) is None or _on_relay_host(request)


def admin(endpoint: Endpoint) -> Endpoint:
    """Guard an endpoint: 404 when the admin side is off (or this is a relay host), else 401 without
    the admin token or a session in ``Authorization``."""

    async def guarded(request: Request) -> Response:
        if _off(request):
            return _not_found()
        if request.app.state.services is None:
            return PlainTextResponse("starting\n", status_code=503)
        try:
            if (retry_after := await auth.throttled(request)) is not None:
                return _too_many(retry_after)
            allowed = await auth.is_admin(request)
        except BrokerUnavailable:
            return PlainTextResponse("session store unavailable\n", status_code=503)
        if not allowed:
            # A wrong credential is a guess at the admin token: it spends the client's login budget.
            if presented_token(request.headers) is not None:
                await auth.attempt(request)
            return PlainTextResponse("admin token required\n", status_code=401, headers=BEARER_CHALLENGE)
        return await endpoint(request)

    return guarded


async def index(request: Request) -> Response:
    """The page: a shell without data; its script signs in (or not) and fetches everything."""
    if _off(request):
        return _not_found()
    return _page(_template("index.html"))


async def login_form(request: Request) -> Response:
    if _off(request):
        return _not_found()
    return _page(_template("login.html"))


async def _form_token(request: Request) -> str | None:
    body = b""
    async for chunk in request.stream():  # a login form is small: read no more than that
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            return None
    return next((v for k, v in parse_qsl(body.decode("utf-8", "replace")) if k == "token"), None)


async def login(request: Request) -> Response:
    """``token=<admin token>`` (a form) -> ``{"session": ..., "expires_in": ...}``; 401 otherwise."""
    digest = auth.admin_digest(request)
    if digest is None or _on_relay_host(request):
        return _not_found()
    services = request.app.state.services
    if services is None:
        return PlainTextResponse("starting\n", status_code=503)
    # Every attempt counts, right or wrong, before the token is compared: guesses sent at once
    # cannot all slip in before the first failure is counted.
    if (retry_after := await auth.attempt(request)) is not None:
        return _too_many(retry_after)
    if not token_matches(await _form_token(request), digest):
        return PlainTextResponse("That is not the admin token.\n", status_code=401)
    ttl = request.app.state.settings.admin_session_seconds
    try:
        session = await auth.open_session(services.broker, digest, ttl)
    except BrokerUnavailable:
        return PlainTextResponse("session store unavailable\n", status_code=503)
    return JSONResponse({"session": session, "expires_in": ttl}, headers={"Cache-Control": "no-store"})


@admin
async def logout(request: Request) -> Response:
    """Ends the session presented (the admin token itself has no session to end)."""
    presented = presented_token(request.headers)
    if presented is not None:
        await auth.close_session(request.app.state.services.broker, presented)
    return Response(status_code=204)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if _off(request) or name not in STATIC:
        return _not_found()
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name], headers=headers)


@admin
async def events(request: Request) -> Response:
    return await live.stream(request)


@admin
async def api_state(request: Request) -> Response:
    return JSONResponse(await state.snapshot(request.app.state), headers={"Cache-Control": "no-store"})


@admin
async def listing(request: Request) -> Response:
    """``GET /reversehttp``: the relay gateway's own list of names, on the admin side."""
    return await relay_endpoints.gateway(request)


def _action(perform: Callable[..., Awaitable[bool]]) -> Endpoint:
    @admin
    async def endpoint(request: Request) -> Response:
        try:
            done = await perform(request.app.state, request.path_params["id"])
        except state.ActionError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=409)
        if not done:
            return PlainTextResponse("no such item\n", status_code=404)
        return PlainTextResponse("", status_code=204)

    return endpoint


def routes() -> list[BaseRoute]:
    """The dashboard and its API (``/``, ``/dashboard/...``)."""
    return [
        Route("/", index, methods=["GET"]),  # on the admin listener; the main host's / is the landing page
        Route("/dashboard/", index, methods=["GET"]),
        Route("/dashboard/login", login_form, methods=["GET"]),
        Route("/dashboard/login", login, methods=["POST"]),
        Route("/dashboard/logout", logout, methods=["POST"]),
        Route("/dashboard/static/{name}", static, methods=["GET"]),
        Route("/dashboard/events", events, methods=["GET"]),
        Route("/dashboard/api/state", api_state, methods=["GET"]),
        Route("/dashboard/api/deliveries/{id}/retry", _action(state.retry_delivery), methods=["POST"]),
        Route("/dashboard/api/deliveries/{id}/cancel", _action(state.cancel_delivery), methods=["POST"]),
        Route("/dashboard/api/registrations/{id}/delete", _action(state.delete_registration), methods=["POST"]),
        Route("/dashboard/api/subscriptions/{id}/delete", _action(state.delete_subscription), methods=["POST"]),
    ]


def listing_routes() -> list[BaseRoute]:
    """``GET /reversehttp`` (the relay's list of names), guarded like the dashboard's API."""
    return [Route("/reversehttp", listing, methods=["GET", "HEAD"])]
