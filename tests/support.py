"""Test helpers that are not fixtures of one module: live servers, required services, waiting."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import anyio
import pytest
import uvicorn

POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379/15"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> NoReturn:
    """Something a test needs is missing: a skip locally; in CI (CI=true) a failure, never a skip."""
    if _in_ci():
        pytest.fail(message + " (required in CI)")
    pytest.skip(message)


def require_service(name: str, host: str, port: int) -> None:
    """Skip locally when a service is unreachable; in CI (CI=true) that is a failure, never a skip."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return
    except OSError as exc:
        unavailable(f"{name} not reachable at {host}:{port}: {exc}")


@pytest.fixture
def postgres_url() -> str:
    """A PostgreSQL URL (REVERSEHUB_TEST_POSTGRES_URL), required in CI."""
    from sqlalchemy.engine import make_url

    url = os.environ.get("REVERSEHUB_TEST_POSTGRES_URL", POSTGRES_DEFAULT)
    parsed = make_url(url)
    require_service("PostgreSQL", parsed.host or "127.0.0.1", parsed.port or 5432)
    return url


@pytest.fixture
def redis_url() -> str:
    """A Redis URL (REVERSEHUB_TEST_REDIS_URL), required in CI."""
    from urllib.parse import urlsplit

    url = os.environ.get("REVERSEHUB_TEST_REDIS_URL", REDIS_DEFAULT)
    parts = urlsplit(url)
    require_service("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve_live(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` with a real uvicorn on a pre-bound 127.0.0.1 socket; yields its base URL.

    uvicorn's own tests do the same (tests/utils.py): await ``started``, stop with ``should_exit``.
    An app built for this should have ``public_url`` equal to the yielded URL: bind the socket first
    with :func:`bound_socket` and pass its port to the settings.
    """
    sock = config.pop("sock", None)
    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False, **config))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        await wait_for(lambda: server.started, timeout=20)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


def bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10, interval: float = 0.01
) -> None:
    """Poll ``condition`` until true, failing after ``timeout`` seconds (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await anyio.sleep(interval)


CHROMIUM = os.environ.get("REVERSEHUB_TEST_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium, headless, with nothing that reaches for the (closed) network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Any]:
    """A headless Chromium driven by Playwright (never ``playwright install``: Debian's binary),
    with ``extra_args`` after :data:`CHROMIUM_ARGS`.

    Missing Chromium or Playwright skips locally and fails in CI (CI=true).
    """
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            from playwright.async_api import async_playwright
        except ImportError as exc:
            missing = f"playwright not importable: {exc}"
    if missing:
        unavailable(missing)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            await browser.close()


def live_settings(database_url: str, port: int, **overrides: Any) -> Any:
    """Settings for an app served by :func:`serve_live` on ``port``, with fast timeouts and retries."""
    from reversehub.core.settings import Settings

    defaults: dict[str, Any] = dict(
        database_url=database_url,
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        migrate=False,
        allow_private_networks=True,
        poll_timeout=1.0,
        unavailable_timeout=2.0,
        reply_timeout=5.0,
        delivery_retry_base=0.05,
        delivery_retry_max=0.2,
        outbox_scan_interval=0.1,
    )
    return Settings(**{**defaults, **overrides})
