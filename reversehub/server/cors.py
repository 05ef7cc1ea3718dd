"""Cross-origin access for pages on other origins (``--cors-origin``; Fetch standard, "CORS protocol").

A page served elsewhere may use, with the JS library, what a browser client needs:

=================================  ===================================================
``/reversehttp``                   register (``POST``); list names (``GET``, only while
                                   there is no admin: with one the list is the admin's)
``/reversehttp/p/…``               a private URL, its inspector and replays
``/reversehttp/r/…``               a request URL (poll, reply)
``/reversehttp/m/…``               a mailbox Location
``/hub``, ``/hub/status``,         subscribe, a subscription's status and replay,
``/hub/replay``, ``/publish``      publish
``/js/reversehub.js``              the library itself (a cross-origin module script
                                   is fetched in CORS mode)
=================================  ===================================================

Nothing else gets CORS headers. A relay public URL (``/relay/NAME/…`` or ``NAME.relay-domain``)
is the application's own: its responses are left as the application wrote them and an ``OPTIONS``
preflight is relayed to it, since only the application knows what it allows. The dashboard and
its API never get any: an admin page must not be readable from another origin.

No response ever carries ``Access-Control-Allow-Credentials``: none of these URLs reads cookies
(tokens travel in ``Authorization``, which a page sends only when it holds the token), so a page
on an allowed origin can do nothing with the visitor's cookies, and ``*`` stays safe.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.routes import GATEWAY, MAILBOX, PRIVATE, REQUEST, Kind, RelayUrls
from reversehub.core.settings import Settings

# How long a browser may cache a preflight (seconds): long enough to spare a round trip per poll,
# short enough that a changed --cors-origin takes effect soon (Chromium caps it at 7200).
MAX_AGE = 600

# Request headers a page may send beyond the CORS-safelisted ones: message/http bodies (the relay's
# replies) and the hub's tokens and idempotency keys.
ALLOW_HEADERS = "Accept, Authorization, Content-Type, Idempotency-Key"

# Response headers the JS library (clients/js/reversehub.js) and other clients read. A browser
# hides every header but the safelisted few (Content-Type, Cache-Control, ...) unless named here.
EXPOSE_HEADERS = ", ".join(
    [
        "Date",  # the subscriber's clock offset for signed status/replay requests
        "Link",
        "Location",
        "Retry-After",
        "X-Hub-Sequence",
        "X-Hub-Signature",
        "X-Replay-Of",
        "X-Sup-Id",
        "Idempotent-Replayed",
        "Webhook-Id",
        "Webhook-Timestamp",
        "Webhook-Signature",
    ]
)

_GET = frozenset({"GET", "HEAD"})
_PATHS: dict[str, frozenset[str]] = {
    "/hub": frozenset({"POST"}),
    "/hub/status": frozenset({"GET"}),
    "/hub/replay": frozenset({"POST"}),
    "/publish": frozenset({"POST"}),
    "/js/reversehub.js": _GET,
}
_PREFIXES: list[tuple[str, frozenset[str]]] = [
    (PRIVATE, frozenset({"GET", "HEAD", "PUT", "DELETE", "POST"})),  # POST: an inspected request's replay
    (REQUEST, frozenset({"GET", "POST"})),
    (MAILBOX, _GET),
]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(value: str) -> str:
    """An origin as browsers send it in ``Origin`` (``scheme://host[:port]``, lowercase, no default
    port), or ``*``. Anything with a path, query or credentials is refused: it would never match."""
    value = value.strip()
    if value == "*":
        return value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port])") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not an origin: no path (scheme://host[:port])")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    suffix = "" if port is None or port == _DEFAULT_PORTS[parts.scheme] else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"


def parse_origins(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(parse_origin(value) for value in values)


class Cors:
    """ASGI layer in front of the whole app (the relay's hot paths included): answers preflights
    and adds CORS headers to responses of the URLs in the table above, for the allowed origins."""

    def __init__(self, app: ASGIApp, *, settings: Settings, urls: RelayUrls) -> None:
        self.app = app
        self.urls = urls
        origins = parse_origins(settings.cors_origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        gateway = frozenset({"POST"}) if settings.admin_token is not None else frozenset({"POST", "GET", "HEAD"})
        self._paths = {**_PATHS, GATEWAY: gateway}

    def methods(self, scope: Scope) -> frozenset[str] | None:
        """The methods another origin may use on this request's URL; None where CORS never applies."""
        found = self.urls.find(scope)
        if found is not None and found[0] is Kind.PUBLIC:
            return None  # relayed: the application's own headers, its own answer to OPTIONS
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        methods = self._paths.get(path)
        if methods is not None:
            return methods
        for prefix, methods in _PREFIXES:
            if path.startswith(prefix):
                return methods
        return None

    def allow_origin(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.methods(scope)
        if methods is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        allowed = self.allow_origin(headers.get("origin"))
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers and "origin" in headers:
            private = headers.get("access-control-request-private-network") == "true"
            await self._preflight(allowed, methods, private)(scope, receive, send)
            return
        added: list[tuple[bytes, bytes]] = []
        if allowed is not None and scope["method"] in methods:
            added += [
                (b"access-control-allow-origin", allowed.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
            ]
        if not self.any_origin:
            added.append((b"vary", b"Origin"))  # the answer differs by Origin: caches must keep them apart

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight(self, allowed: str | None, methods: frozenset[str], private: bool) -> Response:
        """The answer to a preflight (Fetch standard, "CORS-preflight fetch"): 204 with what may be
        sent from the origin; the browser itself refuses a method or header not listed.

        A page on a public address calling this server on a private one (a relay on a LAN)
        is asked about first by Chromium (Private Network Access); an allowed origin may.
        """
        vary = {} if self.any_origin else {"Vary": "Origin"}
        if allowed is None:
            return PlainTextResponse("origin not allowed (--cors-origin)\n", status_code=403, headers=vary)
        headers = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE),
            **vary,
        }
        if private:
            headers["Access-Control-Allow-Private-Network"] = "true"
        return Response(status_code=204, headers=headers)
