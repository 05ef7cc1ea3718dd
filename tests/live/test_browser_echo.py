"""The browser library counts a subscription as made only once the relay took its echo of the
hub's challenge (clients/js/reversehub.js, as clients.Subscriber does), in a real headless Chromium
against a real server. Playwright's request routing stands between the page and the relay: it
refuses the echo, or holds it while the server stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

from hub.models import Subscription
from reversehub.core import db
from reversehub.server.app import create_app
from tests.support import bound_socket, chromium, live_settings, serve_live

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.browser]

SUBSCRIBE = """(topic) => {
    window.states = [];
    import("/js/reversehub.js")
        .then(({ subscribe }) => subscribe(topic, () => {}, { hub: "/hub", onState: (s) => window.states.push(s) }))
        .then(() => { window.result = "subscribed"; }, (e) => { window.result = `failed: ${e.message}`; });
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def open_page(browser: Any, url: str, on_echo: Callable[[Any], Awaitable[None]]) -> Any:
    """A page on ``url``'s origin whose echoes of a challenge (``message/http`` replies carrying a
    200) go to ``on_echo(route)``; every other request goes on as it is."""
    page = await browser.new_page()

    async def route(route: Any) -> None:
        request = route.request
        if (
            request.method == "POST"
            and request.headers.get("content-type") == "message/http"
            and (request.post_data_buffer or b"").startswith(b"HTTP/1.1 200")
        ):
            await on_echo(route)
        else:
            await route.continue_()

    await page.route("**/*", route)
    await page.goto(f"{url}/healthz")
    return page


@asynccontextmanager
async def subscribing(
    browser: Any, database_url: str, name: str, on_echo: Callable[[Any], Awaitable[None]]
) -> AsyncIterator[tuple[Any, str]]:
    """A server, and a page on it subscribing to its topic ``name``; leaving stops the server."""
    sock = bound_socket()
    settings = live_settings(database_url, sock.getsockname()[1])
    async with serve_live(create_app(settings), sock=sock) as url:
        topic = f"{url}/topics/{name}"
        page = await open_page(browser, url, on_echo)
        await page.evaluate(SUBSCRIBE, topic)
        yield page, topic


async def result_of(page: Any) -> tuple[str, list[str]]:
    """subscribe()'s outcome in the page, and the states it went through."""
    await page.wait_for_function("() => window.result !== undefined", timeout=15000)
    return await page.evaluate("() => window.result"), await page.evaluate("() => window.states")


async def subscriptions_to(database_url: str, topic: str) -> int:
    engine = db.create_engine(database_url)
    try:
        async with db.sessionmaker(engine)() as s:
            return int((await s.execute(select(func.count()).where(Subscription.topic == topic))).scalar_one())
    finally:
        await engine.dispose()


async def test_a_page_whose_echo_the_relay_refused_is_not_subscribed(browser: Any, database_url: str) -> None:
    refused: list[str] = []

    async def refuse(route: Any) -> None:
        refused.append(route.request.url)
        await route.fulfill(status=503, body="relay unavailable\n")

    async with subscribing(browser, database_url, "browser-refused", refuse) as (page, topic):
        result, states = await result_of(page)
    assert result.startswith("failed: ") and "relay did not take our answer" in result
    assert len(refused) == 1 and "subscribed" not in states
    assert await subscriptions_to(database_url, topic) == 0


async def test_a_page_whose_server_stopped_before_its_echo_is_not_subscribed(browser: Any, database_url: str) -> None:
    held, release = anyio.Event(), anyio.Event()

    async def hold(route: Any) -> None:
        held.set()
        await release.wait()
        await route.continue_()

    async with subscribing(browser, database_url, "browser-stopped", hold) as (page, topic):
        await held.wait()  # the hub's challenge is in the page; its echo has not gone out
    release.set()  # the server has stopped: the echo goes out now, to nobody
    result, states = await result_of(page)
    assert result.startswith("failed: ") and "relay did not take our answer" in result
    assert "subscribed" not in states
    assert await subscriptions_to(database_url, topic) == 0
