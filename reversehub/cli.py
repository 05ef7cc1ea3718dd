"""``reversehub``: the command line. Only this module imports uvicorn.

Every ``serve`` flag also reads ``REVERSEHUB_<FLAG>`` (DESIGN.md), given explicitly per option:
``auto_envvar_prefix`` would make them ``REVERSEHUB_SERVE_<FLAG>``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

from reversehub.settings import Settings


def _env(flag: str) -> str:
    return "REVERSEHUB_" + flag.upper().replace("-", "_")


def _option(flag: str, **kwargs: Any) -> Any:
    return click.option(f"--{flag}", envvar=_env(flag), show_envvar=True, show_default=True, **kwargs)


@click.group()
@click.version_option(package_name="reversehub")
def main() -> None:
    """reversehub: a WebSub hub and ReverseHttp relay."""


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
            ("public-url", {"default": None, "help": "How the world reaches this server [default: http://HOST:PORT]."}),
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
            ("workers", {"default": 1, "type": int, "help": "Worker processes (needs --redis-url when > 1)."}),
            ("log-level", {"default": "info", "type": click.Choice(["debug", "info", "warning", "error"])}),
        ]
    ):
        f = _option(flag, **kwargs)(f)
    return f


def settings_from(options: dict[str, Any]) -> Settings:
    return Settings(**{k: v for k, v in options.items() if v is not None})


@main.command()
@serve_options
def serve(**options: Any) -> None:
    """Run the hub and relay (embedded SQLite by default)."""
    import uvicorn

    from reversehub.app import create_app

    settings = settings_from(options)
    if settings.workers > 1 and not settings.redis_url:
        raise click.UsageError("--workers > 1 needs --redis-url: processes share transient state through Redis")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,  # ours (reversehub.accesslog) leaves capability URLs out
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@_option("database-url", default=Settings().database_url)
def db_upgrade(database_url: str) -> None:
    """Bring the schema to the newest revision (serve also does this at start)."""
    from reversehub import db as dbmod

    async def run() -> None:
        engine = dbmod.create_engine(database_url)
        try:
            await dbmod.migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    click.echo("database at head")


def _register_client_commands() -> None:
    from clients.cli import commands

    for command in commands:
        main.add_command(command)


_register_client_commands()
