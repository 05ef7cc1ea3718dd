"""Crash test: a server killed with SIGKILL in the middle of a fan-out, restarted on the same
database, delivers everything (at-least-once: every subscriber gets the publish, duplicates are
allowed and carry the same webhook-id)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import defaultdict
from urllib.parse import urlencode

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.support import free_port, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

N = 120

SERVER = textwrap.dedent(
    """
    import dataclasses, sys
    import uvicorn
    from reversehub.server.app import create_app
    from reversehub.core.settings import Settings

    port, url = int(sys.argv[1]), sys.argv[2]
    fields = {f.name for f in dataclasses.fields(Settings)}
    extra = {k: v for k, v in {"rate_limit_window": 0.0}.items() if k in fields}
    settings = Settings(
        host="127.0.0.1", port=port, database_url=url, allow_private_networks=True,
        # slow enough that a kill lands mid fan-out; the claims of the dead process keep the
        # default lease (120 s): the restarted process takes them over because its predecessor's
        # process is gone, not because a lease ran out
        delivery_concurrency=4, delivery_per_host=4, outbox_scan_interval=0.1, **extra,
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    """
)


class Callbacks:
    def __init__(self) -> None:
        self.verified: set[str] = set()
        self.got: dict[str, list[str]] = defaultdict(list)  # path -> webhook-ids received
        self.body = b""
        self.app = Starlette(routes=[Route("/cb/{i}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            self.verified.add(request.url.path)
            return PlainTextResponse(request.query_params["hub.challenge"])
        if await request.body() == self.body:
            self.got[request.url.path].append(request.headers["webhook-id"])
        await anyio.sleep(0.01)
        return Response(status_code=204)


def start(port: int, url: str, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port), url], stdout=log, stderr=log, env=env)


async def healthy(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as c:
            return (await c.get(base + "/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


def active(db: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from hub_subscriptions where state = 'active'").fetchone()[0]


async def test_sigkill_mid_fan_out_then_restart_delivers_everything(tmp_path):
    db = tmp_path / "crash.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    topic = "http://127.0.0.1:9/topic"  # never fetched: fat pings only
    callbacks = Callbacks()
    log = open(tmp_path / "server.log", "ab")
    server = start(port, f"sqlite:///{db}", log)
    try:
        async with serve_live(callbacks.app) as cb_base:
            await wait_for(lambda: healthy(base), timeout=30)
            async with httpx.AsyncClient(base_url=base) as client:
                for i in range(N):
                    form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": f"{cb_base}/cb/{i}"}
                    assert (await client.post("/hub", data=form)).status_code == 202
                await wait_for(lambda: len(callbacks.verified) == N, timeout=30)
                await wait_for(lambda: active(str(db)) == N, timeout=30)
                callbacks.body = b"the one publish"
                r = await client.post(
                    "/publish?" + urlencode({"hub.topic": topic}),
                    content=callbacks.body,
                    headers={"Content-Type": "text/plain"},
                )
                assert r.status_code == 204  # committed: from here on nothing may be lost
            await wait_for(lambda: len(callbacks.got) >= 10, timeout=30)
            server.send_signal(signal.SIGKILL)
            server.wait()
            reached = len(callbacks.got)
            assert reached < N, "the fan-out finished before the kill; slow the callbacks down"
            server = start(port, f"sqlite:///{db}", log)
            await wait_for(lambda: len(callbacks.got) == N, timeout=30)
            # Every subscriber got it; any duplicate carries the same webhook-id.
            assert all(len(set(ids)) == 1 for ids in callbacks.got.values())
            await wait_for(lambda: _all_delivered(str(db)), timeout=30)
    finally:
        server.kill()
        server.wait()
        log.close()


def _all_delivered(db: str) -> bool:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from hub_deliveries where state != 'delivered'").fetchone()[0] == 0
