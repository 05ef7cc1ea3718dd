"""The dashboard's routes: ``/`` (the page), login/logout, static files, the live events and the JSON API.

Off unless ``--admin-token`` is set: every route then answers 404, as if it did not exist.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from reversehub.core.tokens import token_matches
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


def admin(kind: str) -> Callable[[Endpoint], Endpoint]:
    """Guard an endpoint: 404 when the dashboard is off; else ``kind`` says what a stranger gets:
    "page" a redirect to the login form, "api" 401, "action" 403 without the CSRF token."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            if auth.admin_digest(request) is None:
                return _not_found()
            if kind == "action" and not auth.may_act(request):
                return PlainTextResponse("admin token and CSRF token required\n", status_code=403)
            if not auth.is_admin(request):
                if kind == "page":
                    return RedirectResponse("/dashboard/login", status_code=303)
                return PlainTextResponse(
                    "admin token required\n", status_code=401, headers={"WWW-Authenticate": 'Bearer realm="reversehub"'}
                )
            if request.app.state.services is None:
                return PlainTextResponse("starting\n", status_code=503)
            return await endpoint(request)

        return guarded

    return wrap


@admin("page")
async def index(request: Request) -> Response:
    digest = auth.admin_digest(request)
    assert digest is not None  # admin() let us in
    return _page(_template("index.html", csrf=auth.csrf_token(digest)))


async def login_form(request: Request) -> Response:
    if auth.admin_digest(request) is None:
        return _not_found()
    return _page(_template("login.html", message=""))


async def login(request: Request) -> Response:
    digest = auth.admin_digest(request)
    if digest is None:
        return _not_found()
    body = b""
    async for chunk in request.stream():  # a login form is small: read no more than that
        body += chunk
        if len(body) > 4096:
            break
    token = next((v for k, v in parse_qsl(body[:4096].decode("utf-8", "replace")) if k == "token"), None)
    if not token_matches(token, digest):
        return _page(_template("login.html", message="That is not the admin token."), status=401)
    response = RedirectResponse("/", status_code=303)
    auth.set_session(response, request, digest)
    return response


async def logout(request: Request) -> Response:
    if auth.admin_digest(request) is None:
        return _not_found()
    response = RedirectResponse("/dashboard/login", status_code=303)
    auth.clear_session(response)
    return response


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if auth.admin_digest(request) is None or name not in STATIC:
        return _not_found()
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name], headers=headers)


@admin("api")
async def events(request: Request) -> Response:
    return await live.stream(request)


@admin("api")
async def api_state(request: Request) -> Response:
    return JSONResponse(await state.snapshot(request.app.state), headers={"Cache-Control": "no-store"})


def _action(perform: Callable[..., Awaitable[bool]]) -> Endpoint:
    @admin("action")
    async def endpoint(request: Request) -> Response:
        try:
            key = int(request.path_params["id"]) if request.path_params["id"].isdigit() else request.path_params["id"]
            done = await perform(request.app.state, key)
        except state.ActionError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=409)
        if not done:
            return PlainTextResponse("no such item\n", status_code=404)
        return PlainTextResponse("", status_code=204)

    return endpoint


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
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
