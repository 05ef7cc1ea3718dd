"""The relay's URL table: every path the relay serves is spelled here, and nowhere else.

=============================  ==========================================================
``/reversehttp``               the gateway: ``POST`` registers, ``GET`` lists the names
``/reversehttp/p/{cap}``       a private URL: ``GET``/``PUT``/``DELETE`` one registration
``/reversehttp/p/{cap}/requests``  its inspector: ``GET`` the last requests (relay.inspector)
``/reversehttp/p/{cap}/requests/{id}/replay``  ``POST`` sends one again
``/reversehttp/m/{cap}``       a mailbox Location: ``GET`` a stored request's response (relay.mailbox)
``/reversehttp/r/{cap}``       a request URL: ``GET`` polls, ``POST`` replies
``/relay/{name}/{path}``       a public URL, path-based (the default, for local use)
``{scheme}://{name}.{D}/...``  a public URL, host-based (``--relay-domain D``)
=============================  ==========================================================

With ``--relay-domain`` the main host serves no ``/relay/`` path at all: it is where the admin
lives, and relay content must never share its origin (a page served there could drive the
dashboard with the admin's cookies). Each host-based name is an origin of its own, so exposed
sites may also use absolute paths.

:class:`RelayUrls` builds the URLs the relay hands out and recognizes the ones it serves; the
Starlette routes (:func:`routes`), the hot-path dispatch (:class:`HotRoutes`), the rate-limit
classes and the hub's in-process deliveries all derive from it.
"""

from __future__ import annotations

import enum
from urllib.parse import unquote, urlsplit

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Scope

from relay.registry import is_label
from reversehub.core.settings import Settings

GATEWAY = "/reversehttp"
PRIVATE = "/reversehttp/p/"
REQUEST = "/reversehttp/r/"
MAILBOX = "/reversehttp/m/"
INSPECTOR = "/requests"  # under a private URL
PUBLIC = "/relay/"


class Kind(enum.Enum):
    """What a relay URL is (the first column of the table above)."""

    GATEWAY = "gateway"
    PRIVATE = "private"
    REQUEST = "request"
    PUBLIC = "public"


Found = tuple[Kind, dict[str, str]]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_header(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"host":
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


class RelayUrls:
    """The relay's URLs for one deployment: built from ``--public-url`` and ``--relay-domain``.

    A host-based public URL takes its scheme and port from the public URL (wildcard DNS and the
    TLS certificate for ``*.D`` point at this server, as localtunnel and ngrok do).
    """

    def __init__(self, settings: Settings) -> None:
        self.origin = settings.public_origin
        parts = urlsplit(self.origin)
        self.scheme = parts.scheme
        self.port = parts.port
        self._port = parts.port or _DEFAULT_PORTS.get(parts.scheme)  # http://h and http://h:80 are one origin
        self._host = parts.hostname
        self._prefix = parts.path  # a public URL may carry a path prefix (a proxy strips it)
        domain = (settings.relay_domain or "").strip(".").lower()
        self.domain: str | None = domain or None
        self._suffix = "." + domain if domain else ""

    # Building --------------------------------------------------------------------------------------
    def public_url(self, name: str) -> str:
        """Where requesters reach ``name``'s application (the registration's ``rel="related"``)."""
        if self.domain is None:
            return f"{self.origin}{PUBLIC}{name}/"
        port = "" if self.port is None else f":{self.port}"
        return f"{self.scheme}://{name}{self._suffix}{port}/"

    def request_url(self, cap: str) -> str:
        return self.origin + REQUEST + cap

    def private_url(self, cap: str) -> str:
        return self.origin + PRIVATE + cap

    def inspector_url(self, private_cap: str) -> str:
        return self.origin + PRIVATE + private_cap + INSPECTOR

    def mailbox_url(self, cap: str) -> str:
        return self.origin + MAILBOX + cap

    # Recognizing -----------------------------------------------------------------------------------
    def host_name(self, host: str | None) -> str | None:
        """The relay name a ``Host`` header addresses (``NAME.D``, any case, any port), or None.

        ``D`` itself, a nested ``a.b.D`` and anything that is not one DNS label before ``.D`` are
        the main host, never a name.
        """
        if not self._suffix or not host or host[0] == "[":
            return None
        host = host.partition(":")[0].lower()
        if not host.endswith(self._suffix):
            return None
        name = host[: -len(self._suffix)]
        return name if is_label(name) else None

    def find(self, scope: Scope) -> Found | None:
        """The relay URL an HTTP request is for, with its path parameters; None for any other.

        ``name`` is as the request spelled it (lowercase it before use); a public URL's ``path``
        is the rest of the path after the name.
        """
        if self._suffix:
            name = self.host_name(_host_header(scope))
            if name is not None:
                return Kind.PUBLIC, {"name": name, "path": scope["path"][1:]}
        return self.find_path(scope["path"])

    def find_path(self, path: str) -> Found | None:
        """:meth:`find` for a path on the main host."""
        if path.startswith(REQUEST):
            cap = path[len(REQUEST) :]
            return (Kind.REQUEST, {"cap": cap}) if cap and "/" not in cap else None
        if path.startswith(PUBLIC):
            if self._suffix:
                return None  # host-based names: the main host serves no relay content
            name, slash, rest = path[len(PUBLIC) :].partition("/")
            if not name:
                return None
            return Kind.PUBLIC, {"name": name, "path": rest} if slash else {"name": name}
        if path.startswith(PRIVATE):
            cap = path[len(PRIVATE) :]
            return (Kind.PRIVATE, {"cap": cap}) if cap and "/" not in cap else None
        if path == GATEWAY:
            return Kind.GATEWAY, {}
        return None

    def addresses(self, url: str) -> tuple[str, str] | None:
        """``(name, target)`` when ``url`` is one of our public URLs, else None.

        ``name`` is lowercased; ``target`` is the request-target the application receives (the path
        as written, with its query): the whole path of a host-based URL, ``/relay/NAME/...`` of a
        path-based one. A URL must have the public URL's scheme and port to be ours.
        """
        if not self._suffix and not url.startswith(self.origin):
            return None  # path-based names are all under our origin: the common "not ours" is cheap
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        if parts.scheme != self.scheme or (port or _DEFAULT_PORTS.get(parts.scheme)) != self._port:
            return None
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        if self._suffix:
            name = self.host_name(parts.hostname)
            return (name, target) if name is not None else None
        path = unquote(parts.path)
        if parts.hostname != self._host or not path.startswith(self._prefix + PUBLIC):
            return None
        found = self.find_path(path[len(self._prefix) :])
        if found is None or found[0] is not Kind.PUBLIC:
            return None
        return found[1]["name"].lower(), target


def _asgi(handler: ASGIApp) -> ASGIApp:
    """Wrap a raw ASGI function so Starlette sees an app, not an endpoint to wrap in a Request.

    A class whose ``__call__`` *is* the function adds no coroutine frame of its own: thousands of
    held polls each keep their whole chain of frames alive.
    """
    return type(getattr(handler, "__name__", "Asgi"), (), {"__call__": staticmethod(handler)})()  # type: ignore[no-any-return]


class HotRoutes:
    """The endpoint and path parameters for a public URL or a request URL, found without the router.

    These two run for every relayed request (the request, the poll, the reply), so the app
    (reversehub.server.app) asks this before walking the router. A host-based name is always
    answered here, whatever its path: no route of the main host may serve on a relay origin.
    """

    def __init__(self, urls: RelayUrls) -> None:
        from relay import endpoints  # here: endpoints -> service -> this module

        self.urls = urls
        self.public = _asgi(endpoints.public)
        self.request_url = _asgi(endpoints.request_url)

    def __call__(self, scope: Scope) -> tuple[ASGIApp, dict[str, str]] | None:
        urls = self.urls
        if urls.domain is not None:
            name = urls.host_name(_host_header(scope))
            if name is not None:
                return self.public, {"name": name, "path": scope["path"][1:]}
        if scope.get("root_path"):
            return None  # the router knows how to match under a root path
        path = scope["path"]
        if not path.startswith((REQUEST, PUBLIC)):
            return None
        found = urls.find_path(path)
        if found is None:
            return None
        return (self.public if found[0] is Kind.PUBLIC else self.request_url), found[1]


def routes(urls: RelayUrls) -> list[BaseRoute]:
    """The relay's Starlette routes (the hot ones are usually found first by :class:`HotRoutes`)."""
    from relay import endpoints  # here: endpoints -> service -> this module

    hot = HotRoutes(urls)
    table: list[BaseRoute] = [
        Route(GATEWAY, endpoints.gateway, methods=["GET", "POST"]),
        Route(PRIVATE + "{cap}", endpoints.private, methods=["GET", "PUT", "DELETE"]),
        # Raw ASGI callables: they see receive() directly (held polls watch it for disconnects).
        Route(REQUEST + "{cap}", hot.request_url),
        Route(PRIVATE + "{cap}" + INSPECTOR, endpoints.inspect, methods=["GET"]),
        Route(PRIVATE + "{cap}" + INSPECTOR + "/{id}/replay", endpoints.replay, methods=["POST"]),
        Route(MAILBOX + "{cap}", endpoints.mail, methods=["GET"]),
    ]
    if urls.domain is None:  # with host-based names, /relay/... on the main host is a 404
        table += [Route(PUBLIC + "{name}", hot.public), Route(PUBLIC + "{name}/{path:path}", hot.public)]
    return table
