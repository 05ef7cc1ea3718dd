"""The landing page at ``/`` of the main host: what this server is, and where everything is.

Its links are relative: behind a proxy that strips a path prefix (``--public-url https://h/prefix``)
they stay under the prefix, and they work even when the public URL is wrong (the page then shows it).

Plain HTML with no script and nothing loaded from elsewhere; every value in it is escaped. It names
where the dashboard is, never a token or a session. A relay application's origin (``NAME.D`` with
``--relay-domain``) never gets it: those requests are relayed before routing (reversehub.server.app
``ReverseHub``), and a nested host under the relay domain is refused here, as the dashboard refuses it.
"""

from __future__ import annotations

import html
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from relay.routes import RelayUrls
from reversehub.core.settings import Settings
from reversehub.server.startup import dashboard_address

TEMPLATE = (files("reversehub.server") / "landing.html").read_text(encoding="utf-8")
HEADERS = {
    # No script at all; the inline style block is the page's only style.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _dashboard(settings: Settings, admin_url: str | None) -> str:
    where = dashboard_address(settings, admin_url)
    if where is None:
        return "Off: the operator starts the server with <code>--admin-token</code> to turn it on."
    link = f'<a href="{html.escape(where)}">{html.escape(where)}</a>'
    if settings.relay_domain:
        return f"{link} (sign in with the admin token)."
    return (
        f"On the admin listener, {link}, a listener of its own (the relay's pages share this origin); "
        "when it is on loopback, reach it from the server's machine or through an SSH tunnel."
    )


def render(settings: Settings, admin_url: str | None) -> str:
    origin = settings.public_origin
    if settings.admin_token is None:
        gateway = 'Its state, the names and their waiting polls: <a href="reversehttp">/reversehttp</a>.'
    else:
        gateway = "The list of names is on the dashboard."
    values = {
        "origin": html.escape(origin),
        "names": html.escape(RelayUrls(settings).public_url("NAME")),
        "gateway_state": gateway,
        "dashboard": _dashboard(settings, admin_url),
    }
    text = TEMPLATE
    for key, value in values.items():  # the values are HTML already: escaped above, or our own markup
        text = text.replace("{{" + key + "}}", value)
    return text


def _on_relay_host(request: Request, domain: str | None) -> bool:
    host = (request.url.hostname or "").lower().rstrip(".")
    return bool(domain) and host.endswith("." + str(domain).lower().strip("."))


async def landing(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    if _on_relay_host(request, settings.relay_domain):
        return PlainTextResponse("Not Found", status_code=404)
    page = render(settings, getattr(request.app.state, "admin_url", None))
    return HTMLResponse(page, headers=HEADERS)


def routes() -> list[BaseRoute]:
    return [Route("/", landing, methods=["GET", "HEAD"])]
