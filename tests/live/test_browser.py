"""The browser library in a real headless Chromium: the demo page subscribes and shows a publish,
and a page serves requests over the relay with the Endpoint class.

Chromium comes from Debian (``apt-get install chromium``), driven by Playwright's Python API; we
never download Playwright's own browsers. Missing Chromium skips locally and fails in CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from reversehub.server.app import create_app
from tests.support import bound_socket, chromium, live_settings, serve_live

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.browser]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def server_url(database_url: str) -> AsyncIterator[str]:
    sock = bound_socket()
    settings = live_settings(database_url, sock.getsockname()[1])
    async with serve_live(create_app(settings), sock=sock) as url:
        yield url


async def test_demo_page_shows_a_publish(browser: Any, server_url: str) -> None:
    topic = f"{server_url}/topics/browser-demo"
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{server_url}/demo?topic={quote(topic, safe='')}")
    await page.wait_for_function("document.getElementById('state').textContent === 'subscribed'", timeout=15000)
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{server_url}/publish",
            params={"hub.topic": topic},
            content=b"hello from the hub",
            headers={"content-type": "text/plain; charset=utf-8"},
        )
        assert r.status_code < 300
    item = page.locator("#updates li").first
    await item.wait_for(timeout=15000)
    assert await item.text_content() == "hello from the hub"
    assert errors == []


async def test_page_serves_requests_with_endpoint(browser: Any, server_url: str) -> None:
    page = await browser.new_page()
    await page.goto(f"{server_url}/demo?topic={quote(server_url + '/topics/unused', safe='')}")
    public_url = await page.evaluate(
        """async () => {
            const { Endpoint } = await import("/js/reversehub.js");
            window.endpoint = new Endpoint("/reversehttp", async (req) => ({
                status: 200,
                headers: [["content-type", "text/plain"], ["x-method", req.method]],
                body: `page got ${req.method} ${new URL(req.target, location.href).pathname} ${req.text()}`,
            }), { name: "tab", pollers: 2 });
            return await window.endpoint.start();
        }"""
    )
    assert public_url == f"{server_url}/relay/tab/"
    async with httpx.AsyncClient() as http:
        r = await http.post(public_url + "hello", content=b"ping")
        assert (r.status_code, r.text, r.headers["x-method"]) == (200, "page got POST /relay/tab/hello ping", "POST")
        await page.evaluate("() => window.endpoint.stop()")
        assert (await http.get(public_url + "hello")).status_code == 404


async def open_demo(browser: Any, server_url: str, topic: str) -> Any:
    page = await browser.new_page()
    await page.goto(f"{server_url}/demo?topic={quote(topic, safe='')}")
    await page.wait_for_function("document.getElementById('state').textContent === 'subscribed'", timeout=15000)
    return page


async def test_page_checks_signatures_and_drops_duplicates(browser: Any, server_url: str) -> None:
    import hmac

    page = await open_demo(browser, server_url, f"{server_url}/topics/browser-signed")
    callback = await page.evaluate("() => window.subscription.callbackUrl")
    secret = await page.evaluate("() => window.subscription.secret")
    async with httpx.AsyncClient() as http:
        forged = await http.post(
            callback, content=b"forged", headers={"x-hub-signature": "sha256=" + "0" * 64, "webhook-id": "m1"}
        )
        assert forged.status_code == 202
        for _ in range(2):
            signature = "sha512=" + hmac.new(secret.encode(), b"genuine", "sha512").hexdigest()
            r = await http.post(
                callback, content=b"genuine", headers={"x-hub-signature": signature, "webhook-id": "m2"}
            )
            assert r.status_code == 204
        wrong_topic = await http.get(callback, params={"hub.mode": "subscribe", "hub.topic": "x", "hub.challenge": "c"})
        assert wrong_topic.status_code == 404
    assert await page.locator("#updates li").all_text_contents() == ["genuine"]


async def test_page_reconnects_after_the_server_restarts(browser: Any, database_url: str) -> None:
    import socket

    sock = bound_socket()
    port = sock.getsockname()[1]
    settings = live_settings(database_url, port)
    topic = f"http://127.0.0.1:{port}/topics/browser-restart"
    async with serve_live(create_app(settings), sock=sock) as url:
        page = await open_demo(browser, url, topic)
    await page.wait_for_function("document.getElementById('state').textContent === 'reconnecting'", timeout=15000)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    async with serve_live(create_app(settings), sock=sock) as url:
        await page.wait_for_function(
            "['connected', 'subscribed'].includes(document.getElementById('state').textContent)", timeout=15000
        )
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{url}/publish", params={"hub.topic": topic}, content=b"back again")
            assert r.status_code < 300
        item = page.locator("#updates li").first
        await item.wait_for(timeout=15000)
        assert await item.text_content() == "back again"


async def test_page_reregisters_when_the_relay_lost_its_name(browser: Any, server_url: str) -> None:
    topic = f"{server_url}/topics/browser-lost"
    page = await open_demo(browser, server_url, topic)
    await page.evaluate(
        "() => { window.states = []; const s = window.subscription; const prev = s.onState;"
        " s.onState = (x) => { window.states.push(x); prev(x); }; }"
    )
    private_url = await page.evaluate("() => window.subscription.endpoint._privateUrl")
    async with httpx.AsyncClient() as http:
        assert (await http.delete(private_url)).status_code in (200, 204)
        await page.wait_for_function("window.states.includes('subscribed')", timeout=15000)
        r = await http.post(f"{server_url}/publish", params={"hub.topic": topic}, content=b"found again")
        assert r.status_code < 300
    item = page.locator("#updates li").first
    await item.wait_for(timeout=15000)
    assert await item.text_content() == "found again"
