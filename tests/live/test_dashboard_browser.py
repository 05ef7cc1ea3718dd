"""The dashboard in a real headless Chromium (issue 6): it loads, shows a live publish, a click retries.

It is served as ``reversehub serve`` serves it: on the admin listener, beside the main one.

Debian's /usr/bin/chromium driven by the playwright package (never ``playwright install``). Locally
the test is skipped when Chromium is missing; in CI (CI=true) that is a failure. With
``REVERSEHUB_SCREENSHOT_DIR=docs`` the layout test also writes ``dashboard.png`` (1280 px wide) and
``dashboard-420.png`` (a phone) there.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from reversehub.server.app import create_app
from tests.live.test_admin_origin import serving
from tests.support import bound_socket, chromium, wait_for
from tests.test_dashboard import TOKEN, Subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.browser]


def admin_served(settings: Any, subscriber: Subscriber) -> tuple[Any, socket.socket, socket.socket]:
    """The app (admin token set, every outbound request to ``subscriber``, failed deliveries retried
    only after an hour) and its main and admin sockets, bound."""
    sock, admin_sock = bound_socket(), bound_socket()
    app = create_app(
        replace(
            settings,
            public_url=url_of(sock),
            admin_token=TOKEN,
            dashboard_interval=0.2,
            delivery_retry_base=3600.0,
            outbox_scan_interval=0.05,
            log_level="warning",
        ),
        transport=httpx.ASGITransport(app=subscriber),
    )
    return app, sock, admin_sock


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_dashboard_loads_shows_a_live_publish_and_a_click_retries(settings):
    from playwright.async_api import expect

    subscriber = Subscriber()
    app, sock, admin_sock = admin_served(settings, subscriber)
    main, base = url_of(sock), url_of(admin_sock)
    topic, callback = "http://pub.test/feed", "http://sub.test/cb"
    async with (
        serving(app, sock, admin_sock),
        httpx.AsyncClient(base_url=main) as http,
        httpx.AsyncClient(base_url=base) as admin,
        chromium() as browser,
    ):
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # It loads: a stranger is sent to the login form; the token signs in.
        await sign_in(page, base)

        # A live publish: the subscriber's first delivery fails, and the page shows it without a reload.
        await http.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})
        form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
        await wait_for(lambda: _accepted(http, form))
        await wait_for(lambda: _active(admin))
        r = await http.post(f"/publish?hub.topic={topic}", content=b"news", headers={"Content-Type": "text/plain"})
        assert r.status_code < 300
        await expect(page.locator("#total-publishes")).to_have_text("1")
        row = page.locator("#deliveries tbody tr")
        await expect(row).to_have_count(1)
        await expect(row.locator("td").nth(3)).to_have_text("retrying")
        await expect(row.locator("td").nth(6)).not_to_be_empty()
        await expect(page.locator("#registrations tbody")).to_contain_text("alice")
        await expect(page.locator("#subscriptions tbody")).to_contain_text(callback)
        # A click retries the delivery, which now goes through.
        subscriber.accept = True
        await row.get_by_role("button", name="Retry now").click()
        await wait_for(lambda: subscriber.received == [b"news"])
        await expect(page.locator("#deliveries tbody")).to_have_text("none")
        await expect(page.locator("#total-deliveries")).to_have_text("1")
        assert errors == []


async def sign_in(page: Any, base: str) -> None:
    from playwright.async_api import expect

    await page.goto(base + "/")
    assert page.url == base + "/dashboard/login"
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/dashboard/")
    await expect(page.locator("#live")).to_have_text("live")
    assert "token" not in page.url


async def _accepted(http: httpx.AsyncClient, form: dict[str, str]) -> bool:
    return (await http.post("/hub", data=form)).status_code == 202


async def _active(admin: httpx.AsyncClient, count: int = 1) -> bool:
    r = await admin.get("/dashboard/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    return sum(s["state"] == "active" for s in r.json()["subscriptions"]) >= count


# Readable at any width (issue 16): rates and totals, whole URLs, why a delivery waits, no overflow.
NAME = "a-rather-long-relay-application-name"
LONG_CALLBACK = (
    f"http://subscriber-with-a-long-host-name.example.test/relay/{NAME}/webhooks/incoming?key=0123456789abcdef"
)
ENDED_CALLBACK = "http://sub.test/ended"
OVERFLOW = "document.scrollingElement.scrollWidth <= window.innerWidth"
# Cells whose content is wider than they are (and so cut, or spilling over their neighbours).
CLIPPED = """() => [...document.querySelectorAll("td")]
    .filter((td) => td.scrollWidth > td.clientWidth + 1).map((td) => td.textContent)"""


async def test_dashboard_is_readable_at_420_and_1280_px(settings, tmp_path):
    from playwright.async_api import expect

    subscriber = Subscriber()  # fails every delivery: they wait
    app, sock, admin_sock = admin_served(settings, subscriber)
    main, base = url_of(sock), url_of(admin_sock)
    topic = "http://publisher.example.test/feeds/a-topic-with-a-long-path/atom.xml"
    async with (
        serving(app, sock, admin_sock),
        httpx.AsyncClient(base_url=main) as http,
        httpx.AsyncClient(base_url=base) as admin,
        chromium() as browser,
    ):
        await http.post("/reversehttp", data={"name": NAME, "token": "t", "lease": "600"})
        for callback in (LONG_CALLBACK, ENDED_CALLBACK):
            form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
            await wait_for(lambda form=form: _accepted(http, form))
        await wait_for(lambda: _active(admin, 2))
        form = {"hub.mode": "unsubscribe", "hub.topic": topic, "hub.callback": ENDED_CALLBACK}
        await wait_for(lambda: _accepted(http, form))
        for body in (b"first", b"second"):
            r = await http.post(f"/publish?hub.topic={topic}", content=body, headers={"Content-Type": "text/plain"})
            assert r.status_code < 300

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await sign_in(page, base)
        deliveries = page.locator("#deliveries tbody")
        await expect(deliveries).to_contain_text("behind sequence 1")
        await expect(deliveries).to_contain_text("backoff until")
        # Totals are labelled as totals; the rates beside them are per second.
        await expect(page.locator("#total-publishes")).to_have_text("2")
        caption = page.locator("figcaption").first
        await expect(caption).to_contain_text("/s")
        await expect(caption).to_contain_text("total 2")
        # The whole callback URL, relay name and all, in its cell.
        assert LONG_CALLBACK in await page.locator("#subscriptions tbody").text_content()
        ended = page.locator("#subscriptions tbody tr", has_text=ENDED_CALLBACK)
        await expect(ended.locator("td").nth(2)).to_have_text("unsubscribed")
        await expect(ended.locator("td").nth(3)).to_have_text("—")

        for width, name in ((1280, "dashboard.png"), (420, "dashboard-420.png")):
            await page.set_viewport_size({"width": width, "height": 900})
            await page.wait_for_function(f"window.innerWidth === {width}")
            assert await page.evaluate(OVERFLOW), f"horizontal overflow at {width} px"
            assert await page.evaluate(CLIPPED) == [], f"cut cells at {width} px"
            await page.screenshot(path=tmp_path / name, full_page=True)
            if shots := os.environ.get("REVERSEHUB_SCREENSHOT_DIR"):
                await page.screenshot(path=Path(shots) / name, full_page=True)
        assert errors == []
