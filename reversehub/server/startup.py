"""What ``serve`` checks and says before it listens.

A public URL is what the server hands out: every relay request, private and public URL, and the hub's
own ``Link rel="hub"``. One that names no reachable host (``0.0.0.0``, ``::``) makes every one of
them useless to the clients that receive it, so it is refused at start; a listener beyond loopback
without ``--public-url`` still gets its URLs from the address it binds, which is worth a warning.

The start-up log then names every URL a person needs (public URL, gateway, hub, demo, dashboard),
the database and the broker, without a password, a token or a capability.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from urllib.parse import urlsplit

from reversehub.core.settings import Settings


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """``localhost`` (and names under it, RFC 6761), or a loopback address."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def is_unspecified(host: str) -> bool:
    """A host nobody can connect to: empty, ``0.0.0.0``, ``::`` (or ``0``, which resolvers read as 0.0.0.0)."""
    host = host.strip("[]")
    if host in ("", "0"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_unspecified


def refusal(settings: Settings) -> str | None:
    """Why ``serve`` must not start with these settings (one line), or None."""
    if settings.ssl_keyfile and not settings.ssl_certfile:
        return "--ssl-keyfile needs --ssl-certfile (the certificate it belongs to)"
    if settings.public_url is not None:
        reason = _public_url_problem(settings.public_url)
        if reason is not None:
            return f"--public-url {settings.public_url}: {reason}"
    if settings.relay_domain:
        host = (urlsplit(settings.public_origin).hostname or "").lower()
        if host.endswith("." + settings.relay_domain.lower().strip(".")):
            # Hosts under the relay domain are relay applications' origins: requests to it would be
            # relayed, and the landing page and the dashboard refuse to serve there.
            return (
                f"the public URL's host {host} is under --relay-domain {settings.relay_domain}, where relay names live"
            )
    if settings.ssl_certfile:
        return _certificate_problem(settings.ssl_certfile, settings.ssl_keyfile)
    return None


def _certificate_problem(certfile: str, keyfile: str | None) -> str | None:
    asked: list[bool] = []

    def passphrase() -> str:
        # Never OpenSSL's prompt on the terminal (a service has none): an encrypted key is refused.
        asked.append(True)
        return ""

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile, passphrase)
    except (OSError, ssl.SSLError) as exc:
        reason = "the private key is encrypted; give one without a passphrase" if asked else exc.strerror or exc
        return f"cannot use --ssl-certfile {certfile}: {reason}"
    return None


def _public_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must start with https:// or http://"
    if is_unspecified(parts.hostname or ""):
        return "names no host anyone can reach; give the name or address clients use (e.g. https://hub.example.com)"
    if parts.query or parts.fragment or parts.username is not None:
        return "must be an origin, optionally with a path prefix: no user, query or fragment"
    return None


def warnings(settings: Settings) -> list[str]:
    """What is allowed but probably not meant."""
    found = []
    if settings.public_url is None and not is_loopback(settings.host):
        found.append(
            f"listening on {settings.host} without --public-url: every relay and hub URL handed out starts with "
            f"{settings.public_origin}; pass --public-url with the URL clients use (e.g. https://hub.example.com)"
        )
    if settings.admin_token is not None and not settings.relay_domain:
        host = settings.admin_listen.rpartition(":")[0]
        if not is_loopback(host):
            found.append(
                f"--admin-listen {settings.admin_listen} is beyond loopback: the dashboard's sign-in is open to "
                "the network; keep it on 127.0.0.1 and reach it through an SSH tunnel"
            )
    return found


def dashboard_address(settings: Settings, admin_url: str | None) -> str | None:
    """Where the dashboard is: the admin listener's URL (``admin_url``, once bound), the main host's
    ``/dashboard/`` (host-based relay names), or None when it is off (no ``--admin-token``)."""
    if settings.admin_token is None:
        return None
    if settings.relay_domain:
        return settings.public_origin + "/dashboard/"
    return admin_url


def _database(url: str) -> str:
    """The database, without its password: a SQLite file's absolute path, or driver user@host:port/db."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # the engine will say what is wrong with it; never echo a URL we cannot parse
        return "(unparsable URL)"
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            return "SQLite in memory"
        return f"SQLite file {os.path.abspath(database)}"
    user = f"{parsed.username}@" if parsed.username else ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()} {user}{parsed.host or 'localhost'}{port}/{parsed.database or ''}"


def _broker(url: str | None) -> str:
    if url is None:
        return "in-process (one process)"
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"Redis {parts.hostname or 'localhost'}{port}{parts.path or ''}"


def summary(settings: Settings, admin_url: str | None) -> list[str]:
    """The start-up log's lines: every URL a person needs, the database and the dashboard."""
    from relay.routes import RelayUrls

    origin = settings.public_origin
    names = RelayUrls(settings).public_url("NAME")
    dashboard = dashboard_address(settings, admin_url)
    if dashboard is None:
        reach = "dashboard off (start with --admin-token to turn it on)"
    elif settings.relay_domain:
        reach = f"dashboard at {dashboard} (sign in with the admin token)"
    else:
        reach = f"dashboard at {dashboard} (admin listener; sign in with the admin token)"
    return [
        f"public URL {origin}/ (landing page)",
        f"relay gateway {origin}/reversehttp, relay names at {names}",
        f"hub {origin}/hub, publish {origin}/publish",
        f"demo {origin}/demo",
        reach,
        f"database: {_database(settings.database_url)}; broker: {_broker(settings.redis_url)}",
    ]
