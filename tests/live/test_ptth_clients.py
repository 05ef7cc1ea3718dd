"""The Python clients over PTTH against a running ``reversehub serve``, and their fallback to
long-polling against servers that do not offer it: an ``Endpoint`` serving a handler and an ASGI app,
many requests on one connection, a server killed and started again, a ``Subscriber`` receiving signed
deliveries, and the CLI (``expose``, ``subscribe --state``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from clients import AsyncSubscriber, Endpoint, Update
from relay.wire import HttpRequest, HttpResponse
from reversehub.server.app import create_app
from tests.live.test_durable_subscriber import REVERSEHUB, Process, publish, serving
from tests.live.test_tls import serve_tls  # noqa: F401  (reversehub serve over TLS)
from tests.live.test_tls_trust import Pki, pki  # noqa: F401  (the throwaway CA and a cert for 127.0.0.1)
from tests.support import bound_socket, free_port, live_settings, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

ROOT = Path(__file__).resolve().parents[2]
FAST = {"backoff": (0.05, 0.5)}
# The last commit of main before the relay offered PTTH: a real "older reversehub" to fall back on.
BEFORE_PTTH = "956eaf1"


async def echo(request: HttpRequest) -> HttpResponse:
    body = f"{request.method} {request.target} {len(request.body)}".encode()
    return HttpResponse(299, [("Content-Type", "text/plain"), ("X-Backend-Case", "Kept")], body, reason="Custom Reason")


async def healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/healthz", timeout=1)).status_code == 200
    except httpx.TransportError:
        return False


async def check_served(public_url: str, exact: bool = True) -> None:
    """GET, POST and HEAD through the relay reach the handler :func:`echo` and come back exact
    (``exact=False``: reason phrase and header case as a stock uvicorn, which drops them)."""
    async with httpx.AsyncClient() as http:
        r = await http.get(public_url + "a?x=1")
        assert r.status_code == 299
        if exact:
            assert r.reason_phrase == "Custom Reason" and (b"X-Backend-Case", b"Kept") in r.headers.raw
        path = public_url.split("://", 1)[1].split("/", 1)[1]
        assert r.text == f"GET /{path}a?x=1 0"
        r = await http.post(public_url + "b", content=b"x" * 70_000)
        assert r.text == f"POST /{path}b 70000"
        r = await http.head(public_url + "a?x=1")
        assert r.content == b"" and r.headers["content-length"] == str(len(f"HEAD /{path}a?x=1 0"))


# -- a server that offers PTTH -------------------------------------------------------------------


async def test_endpoint_serves_a_handler_over_ptth(tmp_path: Path) -> None:
    states: list[str] = []
    async with serving(tmp_path) as hub:
        async with Endpoint(hub.relay, echo, on_state=states.append, **FAST) as endpoint:
            await wait_for(lambda: endpoint.transport == "ptth")
            assert endpoint.public_url is not None
            await check_served(endpoint.public_url)
            assert endpoint.transports == ("ptth", "ptth") and states == ["registered", "ptth"]


async def test_endpoint_serves_an_asgi_app_over_ptth(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    started: list[bool] = []

    async def item(request: Request) -> JSONResponse:
        return JSONResponse(
            {"id": request.path_params["id"], "q": request.query_params.get("q"), "root": request.scope["root_path"]}
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(True)
        yield

    app = Starlette(routes=[Route("/items/{id}", item)], lifespan=lifespan)
    async with serving(tmp_path) as hub, Endpoint(hub.relay, app=app, **FAST) as endpoint:
        await wait_for(lambda: endpoint.transport == "ptth")
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{endpoint.public_url}items/7?q=ptth")
        assert r.json() == {"id": "7", "q": "ptth", "root": f"/relay/{endpoint.name}"}
        assert started == [True]


async def test_many_requests_at_once_on_one_connection(tmp_path: Path) -> None:
    """One PTTH connection and 24 requests at once: the relay pipelines them on it (up to its
    --ptth-pipeline), the endpoint answers each in order, and each requester gets its own answer."""
    in_hand = 0
    most = 0

    async def slow(request: HttpRequest) -> HttpResponse:
        nonlocal in_hand, most
        in_hand += 1
        most = max(most, in_hand)
        await asyncio.sleep(0.02)
        in_hand -= 1
        return HttpResponse(200, [], request.target.encode())

    async with serving(tmp_path) as hub, Endpoint(hub.relay, slow, pollers=1, **FAST) as endpoint:
        await wait_for(lambda: endpoint.transport == "ptth")
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=30)) as http:
            answers = await asyncio.gather(*(http.get(f"{endpoint.public_url}n{i}") for i in range(24)))
        assert [r.status_code for r in answers] == [200] * 24
        assert [r.text.rsplit("/", 1)[1] for r in answers] == [f"n{i}" for i in range(24)]
        assert most == 1  # in order, one at a time, on the one connection


async def test_pollers_past_the_relays_ptth_bound_long_poll(tmp_path: Path) -> None:
    """One PTTH connection per name allowed: the second poller's upgrade is refused (503) and it
    long-polls; the name is served over both, and the endpoint says so."""
    states: list[str] = []
    async with serving(tmp_path, "--max-ptth-per-name", "1") as hub:
        async with Endpoint(hub.relay, echo, pollers=2, on_state=states.append, **FAST) as endpoint:
            await wait_for(lambda: endpoint.transport == "ptth+long-poll")
            assert sorted(endpoint.transports, key=str) == ["long-poll", "ptth"]
            assert endpoint.public_url is not None
            await check_served(endpoint.public_url)
            assert "ptth+long-poll" in states and "reconnecting" not in states


async def test_closing_answers_the_request_in_hand(tmp_path: Path) -> None:
    """aclose() while a request is being handled on a PTTH connection: it is answered (with
    ``Connection: close``), not cut off with a 502."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(request: HttpRequest) -> HttpResponse:
        entered.set()
        await release.wait()
        return HttpResponse(200, [], b"finished")

    async with serving(tmp_path) as hub, httpx.AsyncClient(timeout=30) as http:
        endpoint = Endpoint(hub.relay, held, pollers=1, **FAST)
        await endpoint.start()
        await wait_for(lambda: endpoint.transport == "ptth")
        request = asyncio.ensure_future(http.get(f"{endpoint.public_url}slow"))
        await asyncio.wait_for(entered.wait(), 20)
        closing = asyncio.ensure_future(endpoint.aclose())
        done, _ = await asyncio.wait({closing}, timeout=0.2)
        assert not done  # aclose() waits for the request in hand
        release.set()
        await closing
        r = await request
        assert (r.status_code, r.text) == (200, "finished")


async def test_the_endpoint_comes_back_after_the_server_was_killed(tmp_path: Path) -> None:
    port = free_port()
    command = [REVERSEHUB, "serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path}/hub.db"]
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / "serve.log").open("ab")
        return subprocess.Popen([*command, "--log-level", "warning"], stdout=log, stderr=log)

    server = start()
    states: list[str] = []
    try:
        await wait_for(lambda: healthy(url), timeout=60)
        async with Endpoint(f"{url}/reversehttp", echo, on_state=states.append, **FAST) as endpoint:
            await wait_for(lambda: endpoint.transport == "ptth")
            server.kill()  # SIGKILL: no goodbye on the PTTH connections
            server.wait()
            await wait_for(lambda: "reconnecting" in states)
            server = start()
            await wait_for(lambda: healthy(url), timeout=60)
            await wait_for(lambda: "connected" in states, timeout=30)
            assert endpoint.transport == "ptth" and endpoint.public_url is not None
            await check_served(endpoint.public_url)
    finally:
        server.kill()
        server.wait()
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])


async def test_a_registration_deleted_under_a_ptth_connection_is_made_again(tmp_path: Path) -> None:
    """DELETE closes the name's PTTH connections; the upgrade on the old request URL is then 404,
    and the endpoint registers again (telling its owner, as after a lost long-poll registration)."""
    states: list[str] = []
    async with serving(tmp_path) as hub:
        async with Endpoint(hub.relay, echo, on_state=states.append, **FAST) as endpoint:
            await wait_for(lambda: endpoint.transport == "ptth")
            assert endpoint._private_url is not None
            async with httpx.AsyncClient() as http:
                assert (await http.delete(endpoint._private_url)).status_code == 204
            await wait_for(lambda: "reregistered" in states, timeout=30)
            assert endpoint.public_url is not None
            await check_served(endpoint.public_url)
            assert endpoint.transport == "ptth"


async def test_a_subscriber_receives_signed_deliveries_over_ptth(tmp_path: Path) -> None:
    updates: list[Update] = []
    states: list[str] = []
    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("ptth")
        async with AsyncSubscriber(
            topic, updates.append, hub=hub.hub, state=state, on_state=states.append, **FAST
        ) as sub:
            assert sub.transport == "ptth" and "ptth" in states
            await publish(hub, topic, "over ptth")
            await wait_for(lambda: [u.text for u in updates] == ["over ptth"])
            await wait_for(lambda: json.loads(state.read_text()).get("transport") == "ptth")
            # A forged delivery (no valid signature) reaches the same code over PTTH: ignored.
            assert sub.callback_url is not None
            async with httpx.AsyncClient() as http:
                r = await http.post(sub.callback_url, content=b"forged", headers={"X-Hub-Signature": "sha256=00"})
            assert r.is_success and sub.rejected == 1
            assert [u.text for u in updates] == ["over ptth"]


async def test_cli_subscribe_with_state_says_ptth(tmp_path: Path) -> None:
    state = tmp_path / "sub.state"
    async with serving(tmp_path) as hub:
        topic = hub.topic("cli-ptth")
        sub = await Process.cli("subscribe", topic, "--hub", hub.hub, "--state", str(state), "--json", ready=None)
        try:
            lines = await sub.until(lambda line: line == "[subscribed]", stream="stderr")
            await publish(hub, topic, "hello")
            assert (await sub.record())["body"] == "hello"
            assert "[serving over PTTH]" in lines or "[serving over PTTH]" in await sub.line("stderr")
            assert json.loads(state.read_text())["transport"] == "ptth"
        finally:
            await sub.stop()


async def test_cli_expose_over_ptth(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def local(request: Any) -> PlainTextResponse:
        return PlainTextResponse(f"local {request.url.path}")

    app = Starlette(routes=[Route("/{path:path}", local)])
    async with serving(tmp_path) as hub, serve_live(app) as local_url:
        args = ("expose", "webapp", "--to", local_url, "--relay", hub.relay, "--transport", "ptth")
        proc = await Process.cli(*args, ready="[serving over PTTH]")
        try:
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{hub.url}/relay/webapp/x")
            assert r.text == "local /x"
        finally:
            await proc.stop()


async def test_ptth_over_tls_verifies_the_relay_as_httpx_does(
    serve_tls: tuple[int, int, Path, subprocess.Popen[bytes]],  # noqa: F811
    pki: Pki,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, _, log, proc = serve_tls
    base = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(pki.ca))
    async with httpx.AsyncClient(verify=trust, timeout=10) as http:

        async def up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                return (await http.get(base + "/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(up, timeout=60)
        async with Endpoint(base + "/reversehttp", echo, verify=trust, **FAST) as endpoint:
            await wait_for(lambda: endpoint.transport == "ptth")
            r = await http.get(f"{endpoint.public_url}x")
            assert r.text == "GET /relay/" + endpoint.name + "/x 0"
        # The certificate is checked on the PTTH connection: with httpx's default CAs (certifi)
        # the throwaway CA is unknown, so no connection is made (registering went through `http`).
        states: list[str] = []
        async with Endpoint(
            base + "/reversehttp", echo, http=http, transport="ptth", on_state=states.append, **FAST
        ) as endpoint:
            await wait_for(lambda: "reconnecting" in states)
            assert endpoint.transport is None
        # And SSL_CERT_FILE is honoured as httpx honours it.
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        async with Endpoint(base + "/reversehttp", echo, **FAST) as endpoint:
            await wait_for(lambda: endpoint.transport == "ptth")


# -- servers that do not offer it ----------------------------------------------------------------


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_fallback_to_long_polling_under_a_stock_uvicorn(database_url: str, http: str) -> None:
    """The same app under a stock uvicorn, whose protocols cannot hand a connection over: the
    upgrade is answered as the poll it also is, and the endpoint long-polls."""
    sock = bound_socket()
    app = create_app(live_settings(database_url, sock.getsockname()[1]))
    states: list[str] = []
    async with serve_live(app, sock=sock, http=http) as url:
        async with Endpoint(f"{url}/reversehttp", echo, on_state=states.append, **FAST) as endpoint:
            assert endpoint.public_url is not None
            await check_served(endpoint.public_url, exact=False)
            await wait_for(lambda: endpoint.transport == "long-poll")
            assert "ptth" not in states and "long-poll" in states


def older_reversehub(tmp: Path) -> Path | None:
    """The source tree of reversehub before PTTH (git archive), or None without that history."""
    git = shutil.which("git")
    if git is None:
        return None
    archive = tmp / "old.tar"
    with archive.open("wb") as out:
        done = subprocess.run([git, "archive", BEFORE_PTTH], cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL)
    if done.returncode != 0:
        return None
    tree = tmp / "old"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


async def test_fallback_to_long_polling_against_an_older_reversehub(tmp_path: Path) -> None:
    tree = older_reversehub(tmp_path)
    if tree is None:
        pytest.skip(f"no git history with {BEFORE_PTTH} (a shallow clone): the stock-uvicorn fallback test remains")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "reversehub", "serve", "--port", str(port), "--poll-timeout", "1"]
    command += ["--database-url", f"sqlite:///{tmp_path}/old.db", "--log-level", "warning"]
    log = (tmp_path / "old.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    server = subprocess.Popen(command, stdout=log, stderr=log, cwd=tempfile.mkdtemp(dir=tmp_path), env=env)
    states: list[str] = []
    try:
        await wait_for(lambda: healthy(url), timeout=60)
        async with Endpoint(f"{url}/reversehttp", echo, on_state=states.append, **FAST) as endpoint:
            assert endpoint.public_url is not None
            await check_served(endpoint.public_url)
            await wait_for(lambda: endpoint.transport == "long-poll")
            assert "ptth" not in states
    finally:
        server.kill()
        server.wait()
        print((tmp_path / "old.log").read_text(errors="replace")[-3000:])
