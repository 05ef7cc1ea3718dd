"""The README's browser snippet, run as written in headless Chromium on a page of ANOTHER origin
(a second local HTTP server, on another port) against a real ``reversehub serve``: with
``--cors-origin`` naming the page's origin it subscribes, gets a publish and answers a relayed
request; without the flag the browser blocks it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live.test_listener import serving
from tests.support import chromium, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.browser]

README = Path(__file__).resolve().parents[2] / "README.md"
# The server address the README's examples use (`make run`'s default).
README_ORIGIN = re.compile(r"http://(?:127\.0\.0\.1|localhost):8000")


def readme_snippet() -> str:
    """The README's first JavaScript block that imports the library."""
    blocks = re.findall(r"```(?:js|javascript)\n(.*?)```", README.read_text(), re.S)
    found: list[str] = [block for block in blocks if "/js/reversehub.js" in block]
    assert found, "README.md has no JavaScript snippet importing /js/reversehub.js"
    return found[0]


@contextmanager
def page_server(page: dict[str, str]) -> Iterator[str]:
    """A plain HTTP server of another origin (another port) serving ``page["html"]`` at ``/`` (set
    once the server it talks to is up: that server must know the page's origin first)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = page["html"].encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def page_html(server_url: str) -> str:
    """The README snippet as written, its server address swapped for the test server's; what it logs
    (the states, the update's text, the public URL) the test reads from the console."""
    script = README_ORIGIN.sub(server_url, readme_snippet())
    head = '<!doctype html><meta charset="utf-8"><title>another origin</title>'
    return f'{head}\n<script type="module">\n{script}</script>\n'


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def open_page(browser: Any, page_url: str) -> list[str]:
    """Open the page; returns the list its console lines (and uncaught errors) are collected in."""
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    await page.goto(page_url + "/")
    return console


async def test_the_readme_snippet_works_from_another_origin(browser: Any, tmp_path: Path) -> None:
    page: dict[str, str] = {}
    with page_server(page) as page_url, serving(tmp_path, "--cors-origin", page_url) as (_, port):
        server_url = f"http://127.0.0.1:{port}"
        assert page_url != server_url  # same host, another port: another origin
        page["html"] = page_html(server_url)
        console = await open_page(browser, page_url)
        public_url = f"{server_url}/relay/"
        await wait_for(lambda: any(line.startswith(public_url) for line in console), timeout=20)
        assert "subscribed" in console, console
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(
                f"{server_url}/publish",
                params={"hub.topic": f"{server_url}/topics/news"},
                content=b"news from the hub",
                headers={"content-type": "text/plain; charset=utf-8"},
            )
            assert r.status_code < 300, r.text
            await wait_for(lambda: "news from the hub" in console, timeout=20)
            endpoint = next(line for line in console if line.startswith(public_url))
            answer = await http.get(endpoint)
            assert (answer.status_code, answer.text) == (200, "hi\n")
    assert not [line for line in console if "CORS" in line or line.startswith("pageerror")], console


async def test_without_the_flag_the_browser_blocks_it(browser: Any, tmp_path: Path) -> None:
    page: dict[str, str] = {}
    with page_server(page) as page_url, serving(tmp_path) as (_, port):
        server_url = f"http://127.0.0.1:{port}"
        page["html"] = page_html(server_url)
        console = await open_page(browser, page_url)
        await wait_for(lambda: any("blocked by CORS policy" in line for line in console), timeout=20)
        # The module import itself is refused; so would be any fetch the library made.
        tab = browser.contexts[-1].pages[-1]
        refused = await tab.evaluate(
            """async (server) => {
                const out = {};
                try { await import(server + "/js/reversehub.js"); out.imported = true; }
                catch (e) { out.importError = String(e); }
                const form = new URLSearchParams({name: "x"});
                try { await fetch(server + "/reversehttp", {method: "POST", body: form}); out.fetched = true; }
                catch (e) { out.fetchError = String(e); }
                return out;
            }""",
            server_url,
        )
        assert "imported" not in refused and "fetched" not in refused, refused
        assert "TypeError" in refused["fetchError"]
    assert not any(line.startswith(f"{server_url}/relay/") for line in console), console
