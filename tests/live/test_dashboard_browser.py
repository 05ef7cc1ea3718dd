"""The dashboard in a real headless Chromium (issue 6): it loads, shows a live publish, a click retries.

It is served as ``reversehub serve`` serves it: on the admin listener, beside the main one.

Debian's /usr/bin/chromium driven by the playwright package (never ``playwright install``). Locally
the test is skipped when Chromium is missing; in CI (CI=true) that is a failure. With
``REVERSEHUB_SCREENSHOT=docs/dashboard.png`` it also writes the README's screenshot.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from reversehub.server.app import create_app
from tests.live.test_admin_origin import serving
from tests.support import bound_socket, chromium, wait_for
from tests.test_dashboard import TOKEN, Subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.browser]


async def test_dashboard_loads_shows_a_live_publish_and_a_click_retries(settings):
    from playwright.async_api import expect

    subscriber = Subscriber()
    sock, admin_sock = bound_socket(), bound_socket()
    main = f"http://127.0.0.1:{sock.getsockname()[1]}"
    base = f"http://127.0.0.1:{admin_sock.getsockname()[1]}"
    app = create_app(
        replace(
            settings,
            public_url=main,
            admin_token=TOKEN,
            dashboard_interval=0.2,
            delivery_retry_base=3600.0,
            outbox_scan_interval=0.05,
            log_level="warning",
        ),
        transport=httpx.ASGITransport(app=subscriber),
    )
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
        await page.goto(base + "/")
        assert page.url == base + "/dashboard/login"
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_url(base + "/dashboard/")
        await expect(page.locator("#live")).to_have_text("live")
        assert "token" not in page.url

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
        if shot := os.environ.get("REVERSEHUB_SCREENSHOT"):
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=shot, full_page=True)

        # A click retries the delivery, which now goes through.
        subscriber.accept = True
        await row.get_by_role("button", name="Retry now").click()
        await wait_for(lambda: subscriber.received == [b"news"])
        await expect(page.locator("#deliveries tbody")).to_have_text("none")
        await expect(page.locator("#total-deliveries")).to_have_text("1")
        assert errors == []


async def _accepted(http: httpx.AsyncClient, form: dict[str, str]) -> bool:
    return (await http.post("/hub", data=form)).status_code == 202


async def _active(admin: httpx.AsyncClient) -> bool:
    r = await admin.get("/dashboard/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    return any(s["state"] == "active" for s in r.json()["subscriptions"])
