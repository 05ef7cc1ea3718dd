"""Durable subscriptions in the browser library (clients/js/reversehub.js, ``state: KEY``), in a
real headless Chromium against a real server: a page closed and opened again with the same
localStorage resumes its relay name and subscription, receives what was published meanwhile in
order and once, has gaps filled by ``/hub/replay``, and hears through ``onGap`` of what the hub no
longer holds.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select

from hub.models import Delivery, DeliveryState, Subscription
from reversehub.core import db
from reversehub.server.app import create_app
from tests.support import bound_socket, chromium, live_settings, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.browser]

KEY = "reversehub-test-subscription"

# Subscribes the page with a state key; window.got collects the updates' texts, window.gaps what
# onGap reported. Resolves to the callback URL once the hub verified.
SUBSCRIBE = """async ({ topic, key, lockTimeout }) => {
    window.got = [];
    window.gaps = [];
    const { subscribe } = await import("/js/reversehub.js");
    window.sub = await subscribe(topic, (u) => { window.got.push(u.text()); }, {
        hub: "/hub", state: key, lockTimeout, onGap: (first, last) => { window.gaps.push([first, last]); },
    });
    return window.sub.callbackUrl;
}"""


@pytest.fixture
async def context() -> AsyncIterator[Any]:
    """A browser context: its pages share one localStorage, as a browser's tabs on one origin do."""
    async with chromium() as browser:
        context = await browser.new_context()
        try:
            yield context
        finally:
            await context.close()


@asynccontextmanager
async def serving(database_url: str, port: int | None = None, **overrides: Any) -> AsyncIterator[str]:
    """A real server (on ``port`` again, for a restart), with ``live_settings`` and ``overrides``."""
    if port is None:
        sock = bound_socket()
    else:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    settings = live_settings(database_url, sock.getsockname()[1], **overrides)
    async with serve_live(create_app(settings), sock=sock) as url:
        yield url


async def open_subscribed(context: Any, url: str, topic: str, page: Any = None) -> Any:
    """A page of ``context`` (a new one, or ``page`` navigated back) on the server's origin,
    subscribed to ``topic`` with the state :data:`KEY`."""
    page = page or await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{url}/healthz")
    callback = await page.evaluate(SUBSCRIBE, {"topic": topic, "key": KEY, "lockTimeout": 10000})
    assert callback.startswith(f"{url}/relay/js-") and errors == []
    return page


@asynccontextmanager
async def subscribed(
    context: Any, database_url: str, name: str, *bodies: str, **overrides: Any
) -> AsyncIterator[tuple[str, str, Any]]:
    """A server (with ``overrides``), and a page of ``context`` subscribed with the state :data:`KEY`
    to its topic ``name`` that received ``bodies``: yields (server URL, topic, page)."""
    async with serving(database_url, **overrides) as url:
        topic = f"{url}/topics/{name}"
        page = await open_subscribed(context, url, topic)
        await publish(url, topic, *bodies)
        assert await got(page, len(bodies)) == list(bodies)
        yield url, topic, page


async def publish(url: str, topic: str, *bodies: str) -> None:
    async with httpx.AsyncClient() as http:
        for body in bodies:
            r = await http.post(
                f"{url}/publish",
                params={"hub.topic": topic},
                content=body.encode(),
                headers={"content-type": "text/plain"},
            )
            assert r.status_code < 300, r.text


async def got(page: Any, count: int, timeout: float = 20) -> list[str]:
    """The page's updates, once it has ``count`` of them (within ``timeout`` seconds)."""
    await page.wait_for_function("(n) => window.got.length >= n", arg=count, timeout=timeout * 1000)
    result: list[str] = await page.evaluate("() => window.got")
    return result


async def saved_state(page: Any) -> dict[str, Any] | None:
    state: dict[str, Any] | None = await page.evaluate(f"() => JSON.parse(localStorage.getItem({KEY!r}))")
    return state


async def rows(database_url: str, query: Any) -> Any:
    engine = db.create_engine(database_url)
    try:
        async with db.sessionmaker(engine)() as s:
            return (await s.execute(query)).all()
    finally:
        await engine.dispose()


async def subscriptions_to(database_url: str, topic: str) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = [
        tuple(r)
        for r in await rows(
            database_url, select(Subscription.callback, Subscription.state).where(Subscription.topic == topic)
        )
    ]
    return result


async def deliveries(database_url: str, topic: str, state: str | None = None) -> int:
    """How many deliveries the hub holds for ``topic`` (in ``state``)."""
    query = (
        select(func.count())
        .select_from(Delivery)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Subscription.topic == topic)
    )
    if state is not None:
        query = query.where(Delivery.state == state)
    return int((await rows(database_url, query))[0][0])


async def test_a_page_opened_again_receives_what_was_published_while_it_was_closed(
    context: Any, database_url: str
) -> None:
    async with subscribed(context, database_url, "browser-durable", "first") as (url, topic, page):
        callback = await page.evaluate("() => window.sub.callbackUrl")
        await page.close()  # no stop(), no unsubscribe: the tab is just gone

        published = [f"while closed {i}" for i in range(10)]
        await publish(url, topic, *published)

        page = await open_subscribed(context, url, topic)
        assert await page.evaluate("() => window.sub.callbackUrl") == callback
        assert await got(page, 10) == published  # in order, and "first" not again
        await publish(url, topic, "later")
        assert await got(page, 11) == [*published, "later"]
        state = await saved_state(page) or {}
        assert (state["callback"], state["topic"], state["last_seq"]) == (callback, topic, 12)
        assert await subscriptions_to(database_url, topic) == [(callback, "active")]

        # One tab at a time per state: a second would share the relay name and split the updates.
        second = await context.new_page()
        await second.goto(f"{url}/healthz")
        refused = await second.evaluate(
            "(args) => (async () => { try { await (" + SUBSCRIBE + ")(args); return 'subscribed'; }"
            " catch (e) { return e.message; } })()",
            {"topic": topic, "key": KEY, "lockTimeout": 300},
        )
        assert "in use by another tab" in refused

        await page.evaluate("() => window.sub.unsubscribe()")
        assert await saved_state(page) is None
        assert await subscriptions_to(database_url, topic) == [(callback, "unsubscribed")]
        async with httpx.AsyncClient() as http:  # the name was relinquished too
            assert (await http.get(callback)).status_code == 404
        assert await got(page, 11) == [*published, "later"]


async def test_a_gap_is_filled_from_replay_in_order(context: Any, database_url: str) -> None:
    async with subscribed(context, database_url, "browser-replay", "a", "b") as (url, topic, page):
        # stop() detaches: the hub keeps queueing for the name while nobody polls it.
        await page.evaluate("() => window.sub.stop()")
        await publish(url, topic, "c")
        # A state older than the hub's outbox (saved from an earlier copy, say): "b" was handled
        # as far as it knows, so "c" (3) comes after a gap that only a replay fills.
        await page.evaluate(
            f"() => {{ const s = JSON.parse(localStorage.getItem({KEY!r})); s.last_seq = 1;"
            f" localStorage.setItem({KEY!r}, JSON.stringify(s)); }}"
        )
        await page.close()

        page = await open_subscribed(context, url, topic)
        assert await got(page, 2) == ["b", "c"]
        await publish(url, topic, "d")
        assert await got(page, 3) == ["b", "c", "d"]
        assert await page.evaluate("() => window.gaps") == []
        assert (await saved_state(page) or {})["last_seq"] == 4


async def test_updates_the_hub_gave_up_are_replayed_before_later_ones(context: Any, database_url: str) -> None:
    # The hub gives a delivery up after a second of failures, and the next one then goes out first.
    async with subscribed(context, database_url, "browser-given-up", "a", delivery_max_age=1.0) as (url, topic, page):
        await page.evaluate(
            "() => { const s = window.sub; const cb = s.callback; window.refuse = true;"
            " s.callback = (u) => { if (window.refuse && u.text() === 'refused') throw new Error('not now');"
            " return cb(u); }; }"
        )
        await publish(url, topic, "refused")

        async def given_up() -> bool:
            return await deliveries(database_url, topic, DeliveryState.FAILED) == 1

        await wait_for(given_up, timeout=20)
        await page.evaluate("() => { window.refuse = false; }")
        await publish(url, topic, "b")
        assert await got(page, 3) == ["a", "refused", "b"]
        assert await page.evaluate("() => window.gaps") == []
        await page.evaluate("() => window.sub.unsubscribe()")


async def test_a_gap_beyond_what_the_hub_holds_is_reported(context: Any, database_url: str) -> None:
    async with subscribed(context, database_url, "browser-lost", "kept", delivery_max_age=1.0) as (url, topic, page):
        port = int(url.rsplit(":", 1)[1])
        await page.close()
        await publish(url, topic, "lost 2", "lost 3")  # given up while nobody polls the name

        async def both_given_up() -> bool:
            return await deliveries(database_url, topic, DeliveryState.FAILED) == 2

        await wait_for(both_given_up, timeout=20)
    # Started again with no retention: its first maintenance pass drops every finished delivery.
    async with serving(database_url, port=port, delivery_retention=0.0) as url:

        async def none_retained() -> bool:
            return await deliveries(database_url, topic) == 0

        await wait_for(none_retained, timeout=20)
        await publish(url, topic, "after")
        page = await open_subscribed(context, url, topic)
        assert await got(page, 1) == ["after"]
        assert await page.evaluate("() => window.gaps") == [[2, 3]]
        assert (await saved_state(page) or {})["last_seq"] == 4
        await page.evaluate("() => window.sub.unsubscribe()")


async def test_updates_the_hub_skipped_are_reported_in_their_place(context: Any, database_url: str) -> None:
    # Two pending deliveries at most: the hub numbers the rest and skips them (its status says so).
    async with subscribed(context, database_url, "browser-skipped", "kept", max_pending_per_subscription=2) as (
        url,
        topic,
        page,
    ):
        await page.goto("about:blank")  # navigated away
        await publish(url, topic, "p2", "p3", "p4", "p5", "p6")  # 2 and 3 queued, 4 to 6 skipped

        page = await open_subscribed(context, url, topic, page)  # and back
        assert await got(page, 2) == ["p2", "p3"]
        await page.wait_for_function("() => window.gaps.length > 0", timeout=20000)
        assert await page.evaluate("() => window.gaps") == [[4, 6]]
        await publish(url, topic, "later")
        assert await got(page, 3) == ["p2", "p3", "later"]
        assert (await saved_state(page) or {})["last_seq"] == 7
        await page.evaluate("() => window.sub.unsubscribe()")


async def test_a_subscription_the_hub_forgot_is_made_anew_and_reported(context: Any, database_url: str) -> None:
    async with subscribed(context, database_url, "browser-forgotten", "one", "two") as (url, topic, page):
        await page.close()
        # Removed at the hub (as the dashboard does): its numbering is gone with it.
        engine = db.create_engine(database_url)
        try:
            async with db.sessionmaker(engine)() as s, s.begin():
                ids = select(Subscription.id).where(Subscription.topic == topic).scalar_subquery()
                await s.execute(delete(Delivery).where(Delivery.subscription_id.in_(ids)))
                await s.execute(delete(Subscription).where(Subscription.topic == topic))
        finally:
            await engine.dispose()

        page = await open_subscribed(context, url, topic)
        assert await page.evaluate("() => window.gaps") == [[3, None]]  # how many were missed: unknown
        await publish(url, topic, "anew")  # number 1 of the new subscription: not a duplicate of "one"
        assert await got(page, 1) == ["anew"]
        assert len(await subscriptions_to(database_url, topic)) == 1
        await page.evaluate("() => window.sub.unsubscribe()")
