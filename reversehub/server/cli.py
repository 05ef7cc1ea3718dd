"""``reversehub``: the command line. Only this module imports uvicorn.

Every ``serve`` flag also reads ``REVERSEHUB_<FLAG>`` (DESIGN.md), given explicitly per option:
``auto_envvar_prefix`` would make them ``REVERSEHUB_SERVE_<FLAG>``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import click

from reversehub.core.settings import Settings

FC = TypeVar("FC", bound=Callable[..., Any])


def _env(flag: str) -> str:
    return "REVERSEHUB_" + flag.upper().replace("-", "_")


def _option(flag: str, **kwargs: Any) -> Callable[[FC], FC]:
    return click.option(f"--{flag}", envvar=_env(flag), show_envvar=True, show_default=True, **kwargs)


def _listed(validate: Any = None) -> Any:
    """Click callback for a repeatable flag whose values may also be comma-separated."""

    def callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        items = tuple(item.strip() for v in value for item in v.split(",") if item.strip())
        if validate is not None:
            try:
                validate(items)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        return items

    return callback


def _domain(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for ``--relay-domain``: a DNS name, at least one dot-separated label."""
    from relay.registry import is_label

    if value is None:
        return None
    domain = value.strip().strip(".").lower()
    labels = domain.split(".")
    if not domain or len(domain) > 200 or not all(is_label(label) for label in labels):
        raise click.BadParameter(f"{value!r} is not a DNS name (e.g. relay.example.com)")
    return domain


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    if value is None:
        return None
    from reversehub.server.serve import parse_address

    try:
        parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


class _Commands(click.Group):
    """The server's commands, and the Python client's (``clients.cli``), imported only when one of
    them is named or the commands are listed: a serving process never runs them, and importing them
    brings the whole client library into its memory."""

    _clients_added = False

    def _add_clients(self) -> None:
        if not self._clients_added:
            self._clients_added = True
            from clients.cli import commands

            for command in commands:
                self.add_command(command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and not self._clients_added:
            self._add_clients()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_clients()
        return super().list_commands(ctx)


@click.group(cls=_Commands)
@click.version_option(package_name="reversehub")
def main() -> None:
    """reversehub: a WebSub hub and ReverseHttp relay."""


def security_options(defaults: Settings) -> list[tuple[str, Any]]:
    """Who may do what: tokens, trusted networks, subscriber policy, rate limits, caps (docs/security.md)."""
    from reversehub.core.addresses import parse_networks
    from reversehub.core.limits import parse_limits
    from reversehub.core.policy import validate_patterns
    from reversehub.core.settings import digest_pair

    def many(help: str, validate: Any = None, default: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"multiple": True, "default": default, "callback": _listed(validate), "help": help}

    secret: dict[str, Any] = {"default": None}

    def pairs(items: tuple[str, ...]) -> None:
        for item in items:
            digest_pair(item)

    return [
        ("admin-token", {**secret, "help": "Token for the dashboard and its API (off without one)."}),
        (
            "admin-listen",
            {
                "default": defaults.admin_listen,
                "callback": _address,
                "help": "HOST:PORT of the dashboard's own listener (path-based relay names).",
            },
        ),
        ("registration-token", {**secret, "help": "Bearer/Basic token required on POST /reversehttp."}),
        ("publish-token", {**secret, "help": "Bearer/Basic token required to publish."}),
        ("topic-token", many("PATTERN=TOKEN: only holders publish matching topics (repeatable).", pairs)),
        ("reserve-name", many("PATTERN=TOKEN: relay names only that registration token may claim.", pairs)),
        (
            "trusted-networks",
            many("CIDRs whose fat pings need no publish token.", parse_networks, defaults.trusted_networks),
        ),
        ("allow-topic", many("Topic patterns subscribers may use (fnmatch, or re:REGEX).", validate_patterns)),
        ("deny-topic", many("Topic patterns refused to subscribers.", validate_patterns)),
        ("allow-callback", many("Callback patterns allowed.", validate_patterns)),
        ("deny-callback", many("Callback patterns refused.", validate_patterns)),
        ("rate-limit-window", {"default": defaults.rate_limit_window, "type": float, "help": "Seconds; 0: no limits."}),
        ("rate-limit", many("CLASS[:KEY]=N requests per window per client (and per KEY); 0: none.", parse_limits)),
        (
            "rate-limit-exempt",
            many("CIDRs never rate limited.", parse_networks, defaults.rate_limit_exempt),
        ),
        ("max-registrations", {"default": defaults.max_registrations, "type": int, "help": "0: no cap."}),
        (
            "max-registrations-per-client",
            {
                "default": defaults.max_registrations_per_client,
                "type": int,
                "help": "Live names one client (address, IPv6 /64) may hold; 0: no cap.",
            },
        ),
        (
            "max-subscriptions-per-callback-host",
            {"default": defaults.max_subscriptions_per_callback_host, "type": int, "help": "0: no cap."},
        ),
        (
            "max-subscriptions-per-callback-host-per-client",
            {
                "default": defaults.max_subscriptions_per_callback_host_per_client,
                "type": int,
                "help": "Of those, how many one client (address, IPv6 /64) may ask for; 0: no cap.",
            },
        ),
        (
            "max-pending-per-subscription",
            {"default": defaults.max_pending_per_subscription, "type": int, "help": "0: no cap."},
        ),
        (
            "max-queued-bytes-per-name",
            {
                "default": defaults.max_queued_bytes_per_name,
                "type": int,
                "help": "Bytes of relayed requests held per name until answered (503 past it); 0: no cap.",
            },
        ),
        (
            "max-queued-bytes",
            {
                "default": defaults.max_queued_bytes,
                "type": int,
                "help": "Bytes of relayed requests a process holds until answered (503 past it); 0: no cap.",
            },
        ),
        *mailbox_options(defaults),
        *ptth_options(defaults),
    ]


def ptth_options(defaults: Settings) -> list[tuple[str, Any]]:
    """PTTH connections (docs/ptth.md)."""

    def count(default: int, least: int, help: str) -> dict[str, Any]:
        return {"default": default, "type": click.IntRange(min=least), "help": help}

    pipeline = "Requests in flight at once on one PTTH connection (HTTP/1.1 pipelining); 1: one at a time."
    cap = "PTTH connections open {} (503 past it); 0: no cap."
    return [
        ("ptth-pipeline", count(defaults.ptth_pipeline, 1, pipeline)),
        ("max-ptth-per-name", count(defaults.max_ptth_per_name, 0, cap.format("per name and process"))),
        ("max-ptth-connections", count(defaults.max_ptth_connections, 0, cap.format("per process"))),
    ]


def mailbox_options(defaults: Settings) -> list[tuple[str, Any]]:
    """Bounds of mailbox names and of the request inspector (docs/mailbox.md)."""
    return [
        (
            "mailbox-max-per-name",
            {
                "default": defaults.mailbox_max_per_name,
                "type": click.IntRange(min=1),
                "help": "Stored requests waiting for their application, per name (507 past it).",
            },
        ),
        (
            "mailbox-max-bytes-per-name",
            {
                "default": defaults.mailbox_max_bytes_per_name,
                "type": click.IntRange(min=1),
                "help": "Stored bytes per name (507 past it).",
            },
        ),
        (
            "mailbox-max-bytes",
            {
                "default": defaults.mailbox_max_bytes,
                "type": click.IntRange(min=1),
                "help": "Stored bytes of all mailboxes (503 past it).",
            },
        ),
        (
            "mailbox-retention",
            {
                "default": defaults.mailbox_retention,
                "type": click.FloatRange(min=0, min_open=True),
                "help": "Seconds a stored request and its response are kept.",
            },
        ),
        (
            "inspector-requests",
            {
                "default": defaults.inspector_requests,
                "type": click.IntRange(min=0),
                "help": "Exchanges kept per name for its owner's inspector; 0: none.",
            },
        ),
        (
            "inspector-max-body",
            {
                "default": defaults.inspector_max_body,
                "type": click.IntRange(min=0),
                "help": "Bytes kept of the body of each inspected request and response.",
            },
        ),
    ]


def serve_options(f: Any) -> Any:
    defaults = Settings()
    for flag, kwargs in reversed(
        [
            ("host", {"default": defaults.host, "help": "Interface to listen on."}),
            ("port", {"default": defaults.port, "type": int, "help": "Port to listen on."}),
            (
                "database-url",
                {"default": defaults.database_url, "help": "SQLAlchemy URL (sqlite:///…, postgresql://…)."},
            ),
            ("redis-url", {"default": None, "help": "Redis URL for the shared broker (scale-out)."}),
            (
                "public-url",
                {"default": None, "help": "How the world reaches this server [default: http(s)://HOST:PORT]."},
            ),
            (
                "ssl-certfile",
                {
                    "default": None,
                    "type": click.Path(dir_okay=False),
                    "help": "TLS certificate chain (PEM) to serve HTTPS; the default public URL is then https.",
                },
            ),
            (
                "ssl-keyfile",
                {"default": None, "type": click.Path(dir_okay=False), "help": "Private key (PEM) of --ssl-certfile."},
            ),
            (
                "relay-domain",
                {
                    "default": None,
                    "callback": _domain,
                    "help": "Host-based relay names: public URLs are NAME.D (wildcard DNS to this server).",
                },
            ),
            (
                "allow-private-networks",
                {
                    "is_flag": True,
                    "default": False,
                    "help": "Allow callbacks and topic fetches to loopback/private addresses.",
                },
            ),
            (
                "poll-timeout",
                {"default": defaults.poll_timeout, "type": float, "help": "A held poll ends in 204 after S."},
            ),
            (
                "unavailable-timeout",
                {
                    "default": defaults.unavailable_timeout,
                    "type": float,
                    "help": "No poller within S: 504 to the requester.",
                },
            ),
            (
                "reply-timeout",
                {
                    "default": defaults.reply_timeout,
                    "type": float,
                    "help": "Delivered but unanswered within S: 504 to the requester.",
                },
            ),
            (
                "connect-timeout",
                {
                    "default": defaults.connect_timeout,
                    "type": float,
                    "help": "Seconds to resolve and connect for a verification, fetch or delivery.",
                },
            ),
            *security_options(defaults),
            ("workers", {"default": 1, "type": int, "help": "Worker processes (needs --redis-url when > 1)."}),
            (
                "request-head-timeout",
                {
                    "default": defaults.request_head_timeout,
                    "type": click.FloatRange(min=0, min_open=True),
                    "help": "A request head not received within S after its first byte: 408.",
                },
            ),
            (
                "max-request-head-size",
                {
                    "default": defaults.max_request_head_size,
                    "type": click.IntRange(min=1024),
                    "help": "Bytes of a request head (request line and header fields); larger: 431.",
                },
            ),
            (
                "max-connections",
                {
                    "default": defaults.max_connections,
                    "type": click.IntRange(min=0),
                    "help": "Open connections per process (lowered to fit the file-descriptor limit); "
                    "past it 503. 0: no cap.",
                },
            ),
            (
                "publish-idempotency-retention",
                {
                    "default": defaults.publish_idempotency_retention,
                    "type": click.FloatRange(min=0, min_open=True),
                    "help": "Seconds a publish's Idempotency-Key is kept: a retry within it is stored once.",
                },
            ),
            (
                "poll-min-interval",
                {
                    "default": defaults.poll_min_interval,
                    "type": click.FloatRange(min=0, min_open=True),
                    "help": "Seconds: the shortest interval at which a feed nobody pings is polled, "
                    "and the first retry of a failing fetch.",
                },
            ),
            (
                "poll-max-interval",
                {
                    "default": defaults.poll_max_interval,
                    "type": click.FloatRange(min=0, min_open=True),
                    "help": "Seconds: the longest poll interval, the safety-net poll of a pinged feed "
                    "and the ceiling of a failing fetch's backoff.",
                },
            ),
            (
                "delivery-claim-seconds",
                {
                    "default": defaults.delivery_claim_seconds,
                    "type": float,
                    "help": "Lease of a claim nobody renews (a dead worker's claims go within 5 heartbeats).",
                },
            ),
            ("log-level", {"default": "info", "type": click.Choice(["debug", "info", "warning", "error"])}),
        ]
    ):
        f = _option(flag, **kwargs)(f)
    return cors_option(f)


def cors_option(f: Any) -> Any:
    """``--cors-origin`` (repeatable; ``REVERSEHUB_CORS_ORIGINS``, comma-separated): docs/cors.md."""
    from reversehub.server.cors import parse_origins

    return click.option(
        "--cors-origin",
        "cors_origins",
        envvar="REVERSEHUB_CORS_ORIGINS",
        show_envvar=True,
        multiple=True,
        default=(),
        callback=_listed(parse_origins),
        help="Origin (scheme://host[:port], or *) whose pages may use the relay, the hub and /js/ (repeatable).",
    )(f)


def settings_from(options: dict[str, Any]) -> Settings:
    settings = Settings(**{k: v for k, v in options.items() if v is not None})
    if settings.poll_min_interval > settings.poll_max_interval:
        raise click.UsageError("--poll-min-interval must not exceed --poll-max-interval")
    return settings


@main.command()
@serve_options
def serve(**options: Any) -> None:
    """Run the hub and relay (embedded SQLite by default); SIGTERM drains (reversehub.server.serve)."""
    from reversehub.server.startup import refusal

    settings = settings_from(options)
    if settings.workers > 1 and not settings.redis_url:
        raise click.UsageError("--workers > 1 needs --redis-url: processes share transient state through Redis")
    reason = refusal(settings)
    if reason is not None:
        raise click.ClickException(reason)  # one line ("Error: ..."), exit status 1
    from reversehub.server.serve import serve as run_server

    _usable_database(settings)
    run_server(settings)


# A database that does not answer within this long at start is reported, not waited for.
DATABASE_PROBE_TIMEOUT = 15.0


def _usable_database(settings: Settings) -> None:
    """Before ``serve`` starts: the drivers the URLs need are installed, and a PostgreSQL server
    answers; otherwise one line that says what to do, instead of a start-up traceback."""
    from reversehub.core import db as dbmod
    from reversehub.core.extras import MissingExtra, require

    try:
        if settings.redis_url:
            require("redis", "--redis-url")
        if dbmod.is_sqlite(settings.database_url):
            return  # a file: serve creates it, and its own errors say which path failed
        dbmod.async_url(settings.database_url)
    except (MissingExtra, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    async def probe() -> None:
        engine = dbmod.create_engine(settings.database_url)
        try:
            async with engine.connect():
                pass
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(probe(), DATABASE_PROBE_TIMEOUT))
    except Exception as exc:
        raise _database_error(settings.database_url, exc) from None


def _database_error(url: str, exc: BaseException) -> click.ClickException:
    """One line for a database that cannot be used: where (without the password), why, what to check."""
    from sqlalchemy.engine import make_url

    try:
        where = make_url(url).render_as_string(hide_password=True)
    except Exception:
        where = "--database-url"
    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or getattr(cause, "orig", None)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        reason = "connection refused"
    elif any(isinstance(c, socket.gaierror) for c in causes):
        reason = "unknown host"
    elif any(isinstance(c, TimeoutError) for c in causes):
        reason = "no answer"
    else:
        # The driver's own words ("password authentication failed", "database ... does not exist").
        text = str(causes[-1]).strip() or type(causes[-1]).__name__
        reason = text.splitlines()[0][:200]
    hint = "is --database-url right?"
    if not where.startswith("sqlite"):
        hint = "is PostgreSQL running there, and is --database-url right?"
    return click.ClickException(f"cannot use the database at {where} ({reason}): {hint}")


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@_option("database-url", default=Settings().database_url)
def db_upgrade(database_url: str) -> None:
    """Bring the schema to the newest revision (serve also does this at start)."""
    from sqlalchemy.exc import DBAPIError

    from reversehub.core import db as dbmod
    from reversehub.core.extras import MissingExtra

    async def run() -> None:
        engine = dbmod.create_engine(database_url)
        try:
            await dbmod.upgrade_here(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except (MissingExtra, dbmod.DatabaseURLError) as exc:
        raise click.ClickException(str(exc)) from None
    except (DBAPIError, OSError) as exc:
        raise _database_error(database_url, exc) from None
    click.echo("database at head")
