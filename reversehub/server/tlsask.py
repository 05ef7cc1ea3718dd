"""``GET /tls-ask?domain=HOST``: may a TLS proxy get a certificate for HOST? (Caddy's on-demand TLS ``ask``.)

A host-based relay name (``--relay-domain D``) is an origin of its own, ``NAME.D``. A certificate
for ``*.D`` needs an ACME DNS challenge, which Debian's Caddy cannot answer (its DNS providers are
plugins). With on-demand TLS Caddy instead obtains a certificate for ``NAME.D`` at the first TLS
handshake that names it, after asking this endpoint. Without the question anybody could make the
proxy request certificates for any number of made-up names and spend the domain's ACME rate limit
(Let's Encrypt: 50 new certificates per registered domain per week), so only the main host and the
names registered now are allowed: 200, anything else 404.

It tells nothing a requester cannot learn otherwise: whether ``https://NAME.D/`` is a live name.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from relay.routes import RelayUrls

PATH = "/tls-ask"


async def ask(request: Request) -> Response:
    domain = request.query_params.get("domain", "").strip().lower().rstrip(".")
    settings = request.app.state.settings
    if domain and domain == (urlsplit(settings.public_origin).hostname or "").lower():
        return PlainTextResponse("main host\n")
    name = RelayUrls(settings).host_name(domain) if domain else None
    relay = getattr(request.app.state, "relay", None)
    if name is not None and relay is not None and await relay.lookup(name) is not None:
        return PlainTextResponse("registered name\n")
    return PlainTextResponse("no such host here\n", status_code=404)


def routes() -> list[BaseRoute]:
    return [Route(PATH, ask, methods=["GET"])]
