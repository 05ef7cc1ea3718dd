"""The admin never shares an origin with relay content (issue 12), shown in a real headless Chromium.

An admin signs in to the dashboard; then a page served through a relay name (an Endpoint answering
with HTML, a script and ``Set-Cookie``) is opened in the same browser, in the admin's own tab and in
another one. It tries every way to read the dashboard's state or change something: fetch and XHR
with credentials, a preflighted and a no-cors POST, a form POST, a popup, a frame, the storage it
can see, same-origin requests. None of it reads or changes anything, and after its cookies landed
the admin is still signed in and the session still acts.

Path-based names: the dashboard is on the admin listener (another port of the same host, so the
relay page's cookies do reach it). Host-based names (``--relay-domain``): the dashboard is on the
main host and the relay page on ``NAME.relay.test`` (Chromium maps that name to 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from clients.endpoint import Endpoint
from relay.wire import HttpRequest, HttpResponse
from reversehub.core.settings import Settings
from reversehub.server.app import ReverseHub, create_app
from reversehub.server.serve import config_for, with_admin
from tests.support import bound_socket, chromium, wait_for
from tests.test_dashboard import TOKEN

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.browser]

SESSION_KEY = "reversehub.session"

# What a hostile relayed application's page tries, once loaded. Each attempt's outcome (or the
# name of the error that stopped it) ends up in window.results, for the test to read.
EVIL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a relayed application</title></head>
<body><h1>nothing to see here</h1><iframe name="sink" id="sink"></iframe>
<script>
(async () => {
  const ADMIN = %(admin)s;
  const results = {};
  const attempt = async (label, f) => {
    try { results[label] = String(await f()); } catch (e) { results[label] = "blocked: " + e.name; }
  };
  const readable = async (r) => r.status + " " + (await r.text());
  const settle = (target, ms) => new Promise((resolve) => { target.onload = resolve; setTimeout(resolve, ms); });
  const action = ADMIN + "/dashboard/api/registrations/victim/delete";
  document.cookie = "reversehub_admin=from-script; path=/";
  document.cookie = "session=from-script; path=/";

  const withCookies = { credentials: "include" };
  await attempt("fetch_state", async () => readable(await fetch(ADMIN + "/dashboard/api/state", withCookies)));
  await attempt("fetch_listing", async () => readable(await fetch(ADMIN + "/reversehttp", withCookies)));
  await attempt("fetch_page", async () => readable(await fetch(ADMIN + "/dashboard/", withCookies)));
  await attempt("fetch_events", async () => readable(await fetch(ADMIN + "/dashboard/events", withCookies)));
  await attempt("xhr_state", () => new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("GET", ADMIN + "/dashboard/api/state");
    x.withCredentials = true;
    x.onload = () => resolve(x.status + " " + x.responseText);
    x.onerror = () => reject(new TypeError("xhr failed"));
    x.send();
  }));
  await attempt("fetch_delete", async () =>
    readable(await fetch(action, { method: "POST", headers: { Authorization: "Bearer guess" }, ...withCookies })));
  await attempt("fetch_delete_no_cors", async () =>
    (await fetch(action, { method: "POST", mode: "no-cors", ...withCookies })).type);
  const guess = new URLSearchParams({ token: "guess" });
  await attempt("fetch_login", async () =>
    readable(await fetch(ADMIN + "/dashboard/login", { method: "POST", body: guess })));
  await attempt("same_origin_state", async () => readable(await fetch("/dashboard/api/state")));
  await attempt("same_origin_listing", async () => readable(await fetch("/reversehttp")));
  await attempt("own_storage", async () =>
    JSON.stringify({ session: { ...sessionStorage }, local: { ...localStorage }, cookie: document.cookie }));
  await attempt("popup", async () => {
    const w = window.open(ADMIN + "/dashboard/", "admin");
    await new Promise((resolve) => setTimeout(resolve, 1000));
    try { return "read " + w.sessionStorage.getItem(%(key)s) + " " + w.document.body.textContent; }
    finally { w.close(); }
  });
  await attempt("frame", async () => {
    const f = document.createElement("iframe");
    f.src = ADMIN + "/dashboard/";
    const loaded = settle(f, 3000);
    document.body.append(f);
    await loaded;
    return "read " + f.contentWindow.sessionStorage.getItem(%(key)s) + " " + f.contentDocument.body.textContent;
  });
  await attempt("form_post", async () => {
    const form = document.createElement("form");
    form.method = "POST";
    form.action = action;
    form.target = "sink";
    document.body.append(form);
    const loaded = settle(document.getElementById("sink"), 3000);
    form.submit();
    await loaded;
    return "submitted";
  });
  window.results = results;
})();
</script></body></html>
"""
SET_COOKIES = [
    ("Set-Cookie", "reversehub_admin=evil; Path=/"),
    ("Set-Cookie", "session=evil; Path=/; HttpOnly"),
    ("Set-Cookie", "Authorization=Bearer%20evil; Path=/"),
]


class EvilApp:
    """The relayed application: its page at ``/`` (with cookies), 404 elsewhere; keeps what it got."""

    def __init__(self, admin_origin: str) -> None:
        self.page = EVIL_PAGE % {"admin": json.dumps(admin_origin), "key": json.dumps(SESSION_KEY)}
        self.received: list[HttpRequest] = []

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.received.append(request)
        if request.target.split("?")[0] in ("/", "/relay/evil/"):
            headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"), *SET_COOKIES]
            return HttpResponse(200, headers, self.page.encode())
        return HttpResponse(404, [("Content-Type", "text/plain")], b"not here\n")


@asynccontextmanager
async def serving(app: ReverseHub, sock: socket.socket, admin_sock: socket.socket | None) -> AsyncIterator[None]:
    """What ``reversehub serve`` runs (its uvicorn configuration, and with an admin listener its
    AdminSplit over both sockets), in this process on real sockets."""
    asgi: Any = with_admin(app, admin_sock) if admin_sock is not None else app
    server = uvicorn.Server(config_for(asgi, app.state.settings))
    sockets = [sock] if admin_sock is None else [sock, admin_sock]
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, sockets)
        await wait_for(lambda: server.started, timeout=20)
        try:
            yield
        finally:
            server.should_exit = True
    for s in sockets:
        s.close()


async def names(http: httpx.AsyncClient, admin: str) -> list[str]:
    r = await http.get(admin + "/dashboard/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    return sorted(n["name"] for n in r.json()["registrations"])


async def evil_results(page: Any, url: str) -> dict[str, str]:
    await page.goto(url)
    await page.wait_for_function("window.results !== undefined", timeout=30000)
    results: dict[str, str] = await page.evaluate("window.results")
    return results


LAYOUTS = [pytest.param("path", id="path-based"), pytest.param("host", id="host-based")]


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_relayed_page_can_neither_read_nor_drive_the_dashboard(
    settings: Settings, layout: str, caplog: pytest.LogCaptureFixture
) -> None:
    from playwright.async_api import expect

    caplog.set_level(logging.INFO, logger="reversehub.access")
    sock = bound_socket()
    port = sock.getsockname()[1]
    main = f"http://127.0.0.1:{port}"
    overrides: dict[str, Any] = {}
    browser_args: list[str] = []
    admin_sock: socket.socket | None = None
    if layout == "path":
        admin_sock = bound_socket()
        admin = f"http://127.0.0.1:{admin_sock.getsockname()[1]}"
    else:
        admin = main  # host-based names: the dashboard stays on the main host
        overrides["relay_domain"] = "relay.test"
        browser_args.append("--host-resolver-rules=MAP *.relay.test 127.0.0.1")
    settings = replace(
        settings,
        public_url=main,
        port=port,
        admin_token=TOKEN,
        dashboard_interval=0.2,
        rate_limit_window=0.0,
        log_level="warning",
        **overrides,
    )
    evil = EvilApp(admin)
    async with (
        serving(create_app(settings), sock, admin_sock),
        httpx.AsyncClient(timeout=10) as http,
        Endpoint(main + "/reversehttp", evil, name="evil", pollers=4) as endpoint,
        chromium(*browser_args) as browser,
    ):
        evil_url = endpoint.public_url
        assert evil_url == (f"{main}/relay/evil/" if layout == "path" else f"http://evil.relay.test:{port}/")
        assert (await http.post(main + "/reversehttp", data={"name": "victim", "token": "t"})).status_code == 201
        before = await names(http, admin)
        assert before == ["evil", "victim"]
        if layout == "path":  # nothing of the admin side on the relay's origin
            for path in ("/dashboard/", "/dashboard/login", "/dashboard/api/state"):
                assert (await http.get(main + path, headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 404

        context = await browser.new_context()
        errors: list[str] = []
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # The admin signs in.
        await page.goto(admin + "/dashboard/")
        await page.wait_for_url(admin + "/dashboard/login")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_url(admin + "/dashboard/")
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#registrations tbody")).to_contain_text("victim")
        session = await page.evaluate(f"sessionStorage.getItem({json.dumps(SESSION_KEY)})")
        assert session and len(session) >= 32
        signed_in = {"Authorization": f"Bearer {session}"}
        assert await context.cookies() == []  # the dashboard sets no cookie at all

        # The relayed page, opened in the admin's own tab (a link followed) and in another tab.
        in_tab = await evil_results(page, evil_url)
        other = await context.new_page()
        in_other_tab = await evil_results(other, evil_url)

        for results in (in_tab, in_other_tab):
            assert set(results) >= {"fetch_state", "popup", "frame", "form_post"}, results
            for label, outcome in results.items():
                assert session not in outcome and TOKEN not in outcome, (label, outcome)
                assert "victim" not in outcome, (label, outcome)  # no admin data, in any answer
            # No CORS on the admin side: another origin's script gets a network error, never the answer.
            for label in ("fetch_state", "fetch_listing", "fetch_page", "fetch_events", "xhr_state", "fetch_login"):
                assert results[label] == "blocked: TypeError", (label, results[label])
            assert results["fetch_delete"] == "blocked: TypeError"  # its preflight is refused
            assert results["fetch_delete_no_cors"] == "opaque"  # sent without credentials: 401, unread
            assert results["form_post"] == "submitted"  # sent too: 401 (the access log below)
            # The admin page in a frame or a popup is another origin's document and storage.
            assert results["frame"] == results["popup"] == "blocked: SecurityError"
            assert not results["same_origin_state"].startswith("200 ")
            assert not results["same_origin_listing"].startswith("200 ")
            storage = json.loads(results["own_storage"])
            assert storage["session"] == {} and storage["local"] == {}

        # Its cookies: on another port of the same host they are the admin origin's cookies too
        # (cookies ignore ports), so the dashboard must not rest on any; a relay host's stay there.
        admin_cookies = {c["name"]: c["value"] for c in await context.cookies(admin + "/")}
        if layout == "path":
            assert admin_cookies.get("reversehub_admin") in ("evil", "from-script"), admin_cookies
        else:
            assert admin_cookies == {}, admin_cookies
        # The relayed application never saw a credential of the admin's.
        assert evil.received
        for request in evil.received:
            assert request.header("authorization") is None
            assert session not in (request.header("cookie") or "")

        # The requests that could be sent reached the admin side and were refused there.
        refused = [r.getMessage() for r in caplog.records if r.name == "reversehub.access"]
        attempts = [line.split()[1:4] for line in refused if "/dashboard/api/registrations/victim/delete" in line]
        posts = [status for method, _, status in attempts if method == "POST"]
        assert len(posts) >= 4 and set(posts) == {"401"}, attempts  # no-cors and form, from both tabs
        preflights = [status for method, _, status in attempts if method == "OPTIONS"]
        assert preflights and not any(status.startswith("2") for status in preflights), attempts

        # Nothing changed, and the admin is still signed in: the session reads and acts.
        assert await names(http, admin) == before
        assert (await http.get(admin + "/dashboard/api/state", headers=signed_in)).status_code == 200
        await page.goto(admin + "/dashboard/")  # back in the tab the relayed page ran in
        assert page.url == admin + "/dashboard/"
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#registrations tbody")).to_contain_text("victim")
        assert await page.evaluate(f"sessionStorage.getItem({json.dumps(SESSION_KEY)})") == session

        def accept(dialog: Any) -> None:
            asyncio.ensure_future(dialog.accept())

        page.on("dialog", accept)
        # The table is redrawn every 2 s and the evil row's poll counts move the layout: a DOM
        # click on the button (the page's own handler, its own session) rather than a pointer one.
        delete = page.locator("#registrations tbody tr", has_text="victim").get_by_role("button", name="Delete")
        await delete.dispatch_event("click")

        async def victim_deleted() -> bool:
            return "victim" not in await names(http, admin)

        await wait_for(victim_deleted)

        # Signing out ends the session on the server too.
        await page.click("#logout")
        await page.wait_for_url(admin + "/dashboard/login")
        assert (await http.get(admin + "/dashboard/api/state", headers=signed_in)).status_code == 401
        assert errors == []
        await context.close()
